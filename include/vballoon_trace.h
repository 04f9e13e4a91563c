/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vballoon tracepoints: /sys/kernel/tracing/events/vballoon/. Page counts
 * are in guest pages; targets in 4 KiB balloon units, as the host sets them.
 */
#undef TRACE_SYSTEM
#define TRACE_SYSTEM vballoon

#if !defined(_VBALLOON_TRACE_H) || defined(TRACE_HEADER_MULTI_READ)
#define _VBALLOON_TRACE_H

#include <linux/tracepoint.h>

DECLARE_EVENT_CLASS(vballoon_batch,
	TP_PROTO(unsigned int pages, unsigned int order, u64 duration_ns),
	TP_ARGS(pages, order, duration_ns),
	TP_STRUCT__entry(
		__field(unsigned int, pages)
		__field(unsigned int, order)
		__field(u64, duration_ns)
	),
	TP_fast_assign(
		__entry->pages = pages;
		__entry->order = order;
		__entry->duration_ns = duration_ns;
	),
	TP_printk("pages=%u order=%u duration_ns=%llu",
		  __entry->pages, __entry->order, __entry->duration_ns)
);

/* One inflate buffer sent; order 9 when it came from 2 MiB blocks. */
DEFINE_EVENT(vballoon_batch, vballoon_inflate,
	TP_PROTO(unsigned int pages, unsigned int order, u64 duration_ns),
	TP_ARGS(pages, order, duration_ns)
);

/* One deflate buffer sent. */
DEFINE_EVENT(vballoon_batch, vballoon_deflate,
	TP_PROTO(unsigned int pages, unsigned int order, u64 duration_ns),
	TP_ARGS(pages, order, duration_ns)
);

TRACE_EVENT(vballoon_target,
	TP_PROTO(unsigned int target, unsigned int actual, unsigned int goal),
	TP_ARGS(target, actual, goal),
	TP_STRUCT__entry(
		__field(unsigned int, target)
		__field(unsigned int, actual)
		__field(unsigned int, goal)
	),
	TP_fast_assign(
		__entry->target = target;
		__entry->actual = actual;
		__entry->goal = goal;
	),
	TP_printk("target=%u actual=%u goal=%u",
		  __entry->target, __entry->actual, __entry->goal)
);

TRACE_EVENT(vballoon_stats,
	TP_PROTO(unsigned int nr, u64 avail, u64 free),
	TP_ARGS(nr, avail, free),
	TP_STRUCT__entry(
		__field(unsigned int, nr)
		__field(u64, avail)
		__field(u64, free)
	),
	TP_fast_assign(
		__entry->nr = nr;
		__entry->avail = avail;
		__entry->free = free;
	),
	TP_printk("nr=%u available=%llu free=%llu",
		  __entry->nr, __entry->avail, __entry->free)
);

/* Pages given back on an OOM notification (DEFLATE_ON_OOM). */
TRACE_EVENT(vballoon_oom_deflate,
	TP_PROTO(unsigned int pages),
	TP_ARGS(pages),
	TP_STRUCT__entry(
		__field(unsigned int, pages)
	),
	TP_fast_assign(
		__entry->pages = pages;
	),
	TP_printk("pages=%u", __entry->pages)
);

/*
 * Pages given back because the guest fell below its reserve, or under
 * pressure below twice its floor (vb_pressure()).
 */
TRACE_EVENT(vballoon_reserve_deflate,
	TP_PROTO(unsigned int pages, unsigned long avail, unsigned long floor),
	TP_ARGS(pages, avail, floor),
	TP_STRUCT__entry(
		__field(unsigned int, pages)
		__field(unsigned long, avail)
		__field(unsigned long, floor)
	),
	TP_fast_assign(
		__entry->pages = pages;
		__entry->avail = avail;
		__entry->floor = floor;
	),
	TP_printk("pages=%u available=%lu floor=%lu",
		  __entry->pages, __entry->avail, __entry->floor)
);

TRACE_EVENT(vballoon_migrate,
	TP_PROTO(unsigned long old_pfn, unsigned long new_pfn),
	TP_ARGS(old_pfn, new_pfn),
	TP_STRUCT__entry(
		__field(unsigned long, old_pfn)
		__field(unsigned long, new_pfn)
	),
	TP_fast_assign(
		__entry->old_pfn = old_pfn;
		__entry->new_pfn = new_pfn;
	),
	TP_printk("old_pfn=0x%lx new_pfn=0x%lx",
		  __entry->old_pfn, __entry->new_pfn)
);

/* A free page hint round answered: pages hinted in blocks of @order. */
TRACE_EVENT(vballoon_hint_round,
	TP_PROTO(u32 cmd_id, unsigned long pages, unsigned int order,
		 u64 duration_ns),
	TP_ARGS(cmd_id, pages, order, duration_ns),
	TP_STRUCT__entry(
		__field(u32, cmd_id)
		__field(unsigned long, pages)
		__field(unsigned int, order)
		__field(u64, duration_ns)
	),
	TP_fast_assign(
		__entry->cmd_id = cmd_id;
		__entry->pages = pages;
		__entry->order = order;
		__entry->duration_ns = duration_ns;
	),
	TP_printk("cmd_id=%u pages=%lu order=%u duration_ns=%llu",
		  __entry->cmd_id, __entry->pages, __entry->order,
		  __entry->duration_ns)
);

/* One free page report acknowledged by the host. */
TRACE_EVENT(vballoon_report,
	TP_PROTO(unsigned int nents, u64 bytes),
	TP_ARGS(nents, bytes),
	TP_STRUCT__entry(
		__field(unsigned int, nents)
		__field(u64, bytes)
	),
	TP_fast_assign(
		__entry->nents = nents;
		__entry->bytes = bytes;
	),
	TP_printk("nents=%u bytes=%llu", __entry->nents, __entry->bytes)
);

#endif /* _VBALLOON_TRACE_H */

#undef TRACE_INCLUDE_PATH
#define TRACE_INCLUDE_PATH .
#undef TRACE_INCLUDE_FILE
#define TRACE_INCLUDE_FILE vballoon_trace
#include <trace/define_trace.h>
