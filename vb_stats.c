// SPDX-License-Identifier: GPL-2.0
/*
 * The statistics queue: the guest's memory figures, sent when the host
 * asks for them.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "vb.h"
#include "vballoon_trace.h"

static void vb_stat(struct vballoon *vb, unsigned int *idx, u16 tag, u64 val)
{
	vb->stats[*idx].tag = cpu_to_virtio16(vb->vdev, tag);
	vb->stats[*idx].val = cpu_to_virtio64(vb->vdev, val);
	(*idx)++;
}

#ifdef CONFIG_VM_EVENT_COUNTERS
/* The statistics only the vm event counters give. */
static void vb_fill_event_stats(struct vballoon *vb, unsigned int *i,
				const unsigned long *events)
{
	unsigned long stall = 0;
	int zid;

	for (zid = 0; zid < MAX_NR_ZONES; zid++)
		stall += events[ALLOCSTALL_NORMAL - ZONE_NORMAL + zid];
#ifdef CONFIG_HUGETLB_PAGE
	vb_stat(vb, i, VIRTIO_BALLOON_S_HTLB_PGALLOC,
		events[HTLB_BUDDY_PGALLOC]);
	vb_stat(vb, i, VIRTIO_BALLOON_S_HTLB_PGFAIL,
		events[HTLB_BUDDY_PGALLOC_FAIL]);
#endif
	vb_stat(vb, i, VIRTIO_BALLOON_S_OOM_KILL, events[OOM_KILL]);
	vb_stat(vb, i, VIRTIO_BALLOON_S_ALLOC_STALL, stall);
}
#endif

/* Fill vb->stats from the guest's figures. Return: how many. */
static unsigned int vb_fill_stats(struct vballoon *vb)
{
	unsigned long *events = vb->events;
	struct sysinfo si;
	unsigned int i = 0;

	si_meminfo(&si);
#ifdef CONFIG_VM_EVENT_COUNTERS
	all_vm_events(events);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_SWAP_IN,
		(u64)events[PSWPIN] << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_SWAP_OUT,
		(u64)events[PSWPOUT] << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_MAJFLT, events[PGMAJFAULT]);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_MINFLT, events[PGFAULT]);
#endif
	vb_stat(vb, &i, VIRTIO_BALLOON_S_MEMFREE,
		(u64)si.freeram << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_MEMTOT,
		(u64)si.totalram << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_AVAIL,
		(u64)max(si_mem_available(), 0L) << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_CACHES,
		(u64)global_node_page_state(NR_FILE_PAGES) << PAGE_SHIFT);
#ifdef CONFIG_VM_EVENT_COUNTERS
	vb_fill_event_stats(vb, &i, events);
#endif
#if defined(CONFIG_VM_EVENT_COUNTERS) || defined(VB_HAVE_NODE_RECLAIM_STATS)
	vb_stat(vb, &i, VIRTIO_BALLOON_S_ASYNC_SCAN,
		(u64)vballoon_reclaim_stat(events, PGSCAN_KSWAPD) << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_DIRECT_SCAN,
		(u64)vballoon_reclaim_stat(events, PGSCAN_DIRECT) << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_ASYNC_RECLAIM,
		(u64)vballoon_reclaim_stat(events, PGSTEAL_KSWAPD) << PAGE_SHIFT);
	vb_stat(vb, &i, VIRTIO_BALLOON_S_DIRECT_RECLAIM,
		(u64)vballoon_reclaim_stat(events, PGSTEAL_DIRECT) << PAGE_SHIFT);
#endif
	trace_vballoon_stats(i, (u64)max(si_mem_available(), 0L) << PAGE_SHIFT,
			     (u64)si.freeram << PAGE_SHIFT);
	return i;
}

/* (Re)post the stats buffer; the host returns it when it wants figures. */
int vb_post_stats(struct vballoon *vb, bool kick)
{
	struct scatterlist sg;
	unsigned int n = vb_fill_stats(vb);
	int err;

	WRITE_ONCE(vb->nr_stats, n);
	sg_init_one(&sg, vb->stats, sizeof(vb->stats[0]) * n);
	err = virtqueue_add_outbuf(vb->stats_vq, &sg, 1, vb, GFP_KERNEL);
	if (!err && kick)
		virtqueue_kick(vb->stats_vq);
	return err;
}

void vb_stats_work(struct work_struct *work)
{
	struct vballoon *vb = container_of(work, struct vballoon, stats_work);
	unsigned int len;

	vb_wake_take(vb, VB_WAKE_STATS);
	if (virtqueue_get_buf(vb->stats_vq, &len)) {
		atomic64_inc(&vb->cnt[VB_CNT_STATS_REQUESTS]);
		if (vb_post_stats(vb, true))
			dev_warn_ratelimited(&vb->vdev->dev,
					     "cannot repost the stats buffer\n");
	}
	vb_wake_done(vb, VB_WAKE_STATS);
}

void vb_stats_request(struct virtqueue *vq)
{
	struct vballoon *vb = vq->vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&vb->stop_lock, flags);
	if (!vb->stop_update) {
		vb_wake_start(vb, VB_WAKE_STATS);
		queue_work(vb->wq, &vb->stats_work);
	}
	spin_unlock_irqrestore(&vb->stop_lock, flags);
}
