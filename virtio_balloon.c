// SPDX-License-Identifier: GPL-2.0
/*
 * vballoon: a virtio memory balloon driver.
 *
 * The host sets a target size in 4 KiB units (num_pages); the driver
 * inflates by allocating guest pages and handing their frame numbers to the
 * host on the inflate queue, deflates by handing them back on the deflate
 * queue and freeing them, and reports what it holds in `actual`. A stats
 * queue carries the guest's memory statistics to the host on request.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/debugfs.h>
#include <linux/delay.h>
#include <linux/device.h>
#include <linux/jiffies.h>
#include <linux/ktime.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/oom.h>
#include <linux/page_reporting.h>
#include <linux/poison.h>
#include <linux/ratelimit.h>
#include <linux/reboot.h>
#include <linux/sched/mm.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/suspend.h>
#include <linux/swap.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>
#include <linux/vmstat.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "vballoon.h"

#define CREATE_TRACE_POINTS
#include "vballoon_trace.h"

/* 4 KiB balloon units per guest page. */
#define VB_UNITS_PER_PAGE	(PAGE_SIZE >> VIRTIO_BALLOON_PFN_SHIFT)

/*
 * Frame numbers per inflate/deflate buffer. Some hosts reject longer
 * buffers (cloud-hypervisor) or cap a descriptor at 256 entries
 * (Firecracker), so this is also the protocol's practical maximum.
 */
#define VB_PFNS_PER_BUF		256

#define VB_STATS_MAX		16

/*
 * Buffers in flight per queue: the guest allocates the next batch while
 * the host discards the last. Capped by the queue size at probe.
 */
#define VB_BUFS			32

/* One pass of the size work; then `actual` is updated and it requeues. */
#define VB_PASS_MS		100

/* Huge-page-first inflation takes blocks the size of a host huge page. */
#define VB_HUGE_ORDER		get_order(SZ_2M)
#define VB_HUGE_PAGES		BIT(VB_HUGE_ORDER)

/* Backoff when the guest cannot spare pages: doubles up to the cap. */
#define VB_BACKOFF_MIN_MS	200
#define VB_BACKOFF_MAX_MS	30000

/* While the balloon holds pages, the reserve is checked this often. */
#define VB_GUARD_MS		1000

/*
 * The size and stats work. The size work gives pages back to a guest short
 * of memory (the reserve): it must run even when no worker can be forked.
 */
static struct workqueue_struct *vb_wq;

/* Virtqueues in the spec's order; absent ones are skipped by the transport. */
enum vb_vq {
	VB_VQ_INFLATE,
	VB_VQ_DEFLATE,
	VB_VQ_STATS,
	VB_VQ_HINT,
	VB_VQ_REPORTING,
	VB_VQ_MAX
};

/* A module parameter that only takes whole numbers in [min, max]. */
struct vb_uint_param {
	unsigned int val;
	unsigned int min, max;
};

static int vb_uint_param_set(const char *val, const struct kernel_param *kp)
{
	struct vb_uint_param *p = kp->arg;
	unsigned int n;

	if (kstrtouint(val, 0, &n) || n < p->min || n > p->max) {
		pr_err("%s: '%.*s' is not a whole number from %u to %u\n",
		       kp->name, (int)strcspn(val, "\n"), val, p->min, p->max);
		return -EINVAL;
	}
	WRITE_ONCE(p->val, n);
	return 0;
}

/* Guest memory in MiB, balloon included: the most a reserve can be. */
static unsigned int vb_ram_mib(unsigned long balloon_pages)
{
	return (totalram_pages() + balloon_pages) >> (20 - PAGE_SHIFT);
}

static int vb_reserve_param_set(const char *val,
				const struct kernel_param *kp)
{
	struct vb_uint_param *p = kp->arg;
	unsigned int n;

	if (kstrtouint(val, 0, &n) || n > vb_ram_mib(0)) {
		pr_err("%s: '%.*s' is not a whole number of MiB from 0 to the guest's %u\n",
		       kp->name, (int)strcspn(val, "\n"), val, vb_ram_mib(0));
		return -EINVAL;
	}
	WRITE_ONCE(p->val, n);
	return 0;
}

static int vb_uint_param_get(char *buf, const struct kernel_param *kp)
{
	struct vb_uint_param *p = kp->arg;

	return sysfs_emit(buf, "%u\n", READ_ONCE(p->val));
}

static const struct kernel_param_ops vb_uint_param_ops = {
	.set = vb_uint_param_set,
	.get = vb_uint_param_get,
};

static struct vb_uint_param oom_pages = { .val = 256, .min = 1, .max = 65536 };
module_param_cb(oom_pages, &vb_uint_param_ops, &oom_pages, 0644);
MODULE_PARM_DESC(oom_pages,
		 "4 KiB units given back per OOM notification when the host offers DEFLATE_ON_OOM, rounded up to whole guest pages (1-65536, default 256: 1 MiB, as the in-tree driver)");

static struct vb_uint_param report_order = {
	.val = 0, .min = 0, .max = VBALLOON_MAX_ORDER,
};
module_param_cb(report_order, &vb_uint_param_ops, &report_order, 0444);
MODULE_PARM_DESC(report_order,
		 "Smallest free block (buddy order of guest pages) reported to the host with free page reporting; 0: 2 MiB blocks, or the pageblock order if smaller");

static struct vb_uint_param batch = {
	.val = VB_PFNS_PER_BUF, .min = 1, .max = VB_PFNS_PER_BUF,
};
module_param_cb(batch, &vb_uint_param_ops, &batch, 0644);
MODULE_PARM_DESC(batch,
		 "Page frame numbers per inflate/deflate buffer (1-256, default 256; rounded down to whole guest pages)");

static bool huge_first = true;
module_param(huge_first, bool, 0644);
MODULE_PARM_DESC(huge_first,
		 "Inflate with whole 2 MiB blocks while the guest has them free, so a host backed by huge pages frees whole huge pages (default Y)");

static const struct kernel_param_ops vb_reserve_param_ops = {
	.set = vb_reserve_param_set,
	.get = vb_uint_param_get,
};

static struct vb_uint_param reserve_mib = { .val = 0 };
module_param_cb(reserve_mib, &vb_reserve_param_ops, &reserve_mib, 0444);
MODULE_PARM_DESC(reserve_mib,
		 "MemAvailable (MiB) the balloon always leaves the guest, giving pages back when the guest's own use eats into it (0-guest memory; default 0: only the automatic inflation floor, 1/32 of guest memory and at least 32 MiB, which is also the least a reserve can be)");

static struct vb_uint_param max_balloon_pct = {
	.val = 100, .min = 1, .max = 100,
};
module_param_cb(max_balloon_pct, &vb_uint_param_ops, &max_balloon_pct, 0444);
MODULE_PARM_DESC(max_balloon_pct,
		 "Largest balloon as a percentage of guest memory (1-100, default 100)");

static bool inflate = true;
module_param(inflate, bool, 0444);
MODULE_PARM_DESC(inflate,
		 "N: stats-only mode, the host gets statistics but the balloon never inflates (default Y)");

/* Free page hints go out in blocks of the largest buddy order. */
#define VB_HINT_ORDER		VBALLOON_MAX_ORDER
#define VB_HINT_GFP		(__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC)

/* One inflate or deflate request to the host. */
struct vb_buf {
	/* Deflated pages waiting for the host's ack (MUST_TELL_HOST). */
	struct list_head pages;
	unsigned int n;
	__virtio32 pfns[VB_PFNS_PER_BUF];
};

/* Free page hinting: the host's command ids and the blocks hinted. */
struct vb_hint {
	struct virtqueue *vq;
	struct workqueue_struct *wq;
	struct work_struct work;
	/* Set by config_changed: the command id must be read again. */
	unsigned long reread;
	/* Set by the shrinker: the guest is short, this round takes no more. */
	unsigned long squeezed;
	/* Set from suspend or hibernation preparation to their end. */
	unsigned long paused;
	u32 cmd_id;
	__virtio32 active;
	__virtio32 stop;
	/*
	 * Guards @vq (NULL while the queues are gone) and the blocks: those
	 * still in the ring, and those the host has used. Until the host is
	 * DONE the guest holds both; the shrinker takes only used ones.
	 */
	spinlock_t lock;
	struct list_head ring;
	struct list_head used;
	unsigned long nr_blocks;
	struct shrinker *shrinker;
	struct notifier_block pm_nb;
};

/* Monotonic counters since probe, shown in sysfs under these names. */
enum vb_counter {
	VB_CNT_INFLATED_PAGES,
	VB_CNT_DEFLATED_PAGES,
	VB_CNT_OOM_DEFLATED_PAGES,
	VB_CNT_RESERVE_DEFLATED_PAGES,
	VB_CNT_MIGRATED_PAGES,
	VB_CNT_ALLOC_FAILURES,
	VB_CNT_LAST_ALLOC_FAILURE_MS,
	VB_CNT_REFUSALS,
	VB_CNT_HINT_ROUNDS,
	VB_CNT_HINTED_PAGES,
	VB_CNT_REPORTS,
	VB_CNT_REPORTED_BYTES,
	VB_CNT_STATS_REQUESTS,
	VB_CNT_PCP_PAGES,
	VB_CNT_HIGH_PAGES,
	VB_NR_COUNTERS
};

struct vballoon {
	struct virtio_device *vdev;
	struct virtqueue *inflate_vq, *deflate_vq, *stats_vq, *reporting_vq;

	/* Serialises inflate, deflate and migration, and guards @pfns. */
	struct mutex lock;
	/* Balloon size in 4 KiB units, as reported in `actual`. */
	unsigned int num_pages;
	struct vballoon_pages *pages;

	/* Inflate and deflate buffers come back here. */
	wait_queue_head_t acked;
	/* Bumped by every ack interrupt: a waiter that saw it change looks. */
	atomic_t acks;
	/* The OOM notifier wants the lock: an inflate pass stops. */
	atomic_t oom_waiting;
	/* The host acked the one-page buffer of a migration. */
	bool mig_acked;
	struct vb_buf *bufs;
	unsigned long free_bufs;	/* bitmap of @bufs not in flight */
	unsigned int max_inflight;
	unsigned int inflight;
	/* The rest of a huge block split for inflation, not yet sent. */
	struct list_head stash;
	unsigned int nr_stash;
	/* One page's frame numbers, for migration. */
	__virtio32 mig_pfns[VB_UNITS_PER_PAGE];
	/*
	 * Pages the inflate got but cannot name to the host (vb_nameable()),
	 * held while the inflate lasts so the allocator moves on.
	 */
	spinlock_t high_lock;
	struct list_head high;
	unsigned long nr_high;
	bool high_told;

	struct delayed_work size_work;
	struct work_struct stats_work;
	/* Set on removal: interrupts must not queue work any more. */
	spinlock_t stop_lock;
	bool stop_update;
	/* Wakeup events (vb_wake_start()): VB_WAKE_* asked for, and taken. */
	spinlock_t wake_lock;
	unsigned int wake_pending, wake_busy;
	bool waking;

	/* Automatic floor: the least MemAvailable kept, in guest pages. */
	unsigned long floor_pages;
	/* Pages taken from per-CPU lists for this target (vb_inflate()). */
	unsigned long pcp_taken;
	/* Guest-side policy; module parameters give the defaults. */
	unsigned int reserve_mib;
	unsigned int max_pct;
	bool inflate;
	unsigned int backoff_ms;
	/* No inflation before this (jiffies): the backoff. */
	unsigned long retry_at;
	/* The last target refused, counted once. */
	bool refused;
	unsigned int refused_target;
	struct ratelimit_state fail_rs;

	/* For debugfs: the last target change and the stats last sent. */
	unsigned int last_target, prev_target;
	u64 last_target_ms;
	unsigned int nr_stats;
	struct dentry *debugfs;
	atomic64_t cnt[VB_NR_COUNTERS];

	struct notifier_block oom_nb;
	struct notifier_block reboot_nb;
	/* vb_quiesce() ran: reporting, OOM notifier and work are stopped. */
	bool quiesced;
	struct vb_hint hint;
	struct page_reporting_dev_info reporting;
	bool reporting_on;
	/* vb_init_vqs() succeeded and the queues are not deleted yet. */
	bool vqs_live;

	struct virtio_balloon_stat stats[VB_STATS_MAX];
	/* vb_fill_stats()'s copy of the event counters: too big for a stack. */
	unsigned long events[NR_VM_EVENT_ITEMS];
};

static bool vb_has(struct vballoon *vb, unsigned int fbit)
{
	return virtio_has_feature(vb->vdev, fbit);
}

static void vb_ack(struct virtqueue *vq)
{
	struct vballoon *vb = vq->vdev->priv;

	atomic_inc(&vb->acks);
	wake_up(&vb->acked);
}

/*
 * The protocol names 4 KiB frames in 32 bits: guest memory at or above
 * 16 TiB cannot be named, and a truncated number would make the host
 * discard a page the guest still uses.
 */
#define VB_PFN_LIMIT	(1ULL << (32 - (PAGE_SHIFT - VIRTIO_BALLOON_PFN_SHIFT)))

static bool vb_nameable(struct page *page)
{
	return (u64)page_to_pfn(page) < VB_PFN_LIMIT;
}

static void vb_put_pfns(struct vballoon *vb, __virtio32 *pfns,
			unsigned int *n, struct page *page)
{
	unsigned long pfn = page_to_pfn(page) <<
		(PAGE_SHIFT - VIRTIO_BALLOON_PFN_SHIFT);
	unsigned int i;

	for (i = 0; i < VB_UNITS_PER_PAGE; i++)
		pfns[(*n)++] = cpu_to_virtio32(vb->vdev, pfn + i);
}

/*
 * Move the pages of @list that cannot be named to the host to vb->high.
 * They stay allocated while the inflate lasts, so the allocator moves on
 * to memory that can. Return: how many.
 */
static unsigned int vb_hold_high(struct vballoon *vb, struct list_head *list)
{
	struct page *page, *tmp;
	unsigned int n = 0;
	LIST_HEAD(high);

	list_for_each_entry_safe(page, tmp, list, lru) {
		if (likely(vb_nameable(page)))
			continue;
		list_move(&page->lru, &high);
		n++;
	}
	if (!n)
		return 0;
	spin_lock(&vb->high_lock);
	list_splice(&high, &vb->high);
	WRITE_ONCE(vb->nr_high, vb->nr_high + n);
	spin_unlock(&vb->high_lock);
	atomic64_add(n, &vb->cnt[VB_CNT_HIGH_PAGES]);
	if (!vb->high_told) {
		vb->high_told = true;
		dev_warn(&vb->vdev->dev,
			 "memory at or above 16 TiB cannot be named to the host (32-bit frame numbers): inflating from memory below\n");
	}
	return n;
}

/* Give the pages vb_hold_high() kept to the guest. Return: how many. */
static unsigned long vb_release_high(struct vballoon *vb)
{
	struct page *page, *tmp;
	unsigned long n;
	LIST_HEAD(list);

	if (!READ_ONCE(vb->nr_high))
		return 0;
	spin_lock(&vb->high_lock);
	list_splice_init(&vb->high, &list);
	n = vb->nr_high;
	WRITE_ONCE(vb->nr_high, 0);
	spin_unlock(&vb->high_lock);
	list_for_each_entry_safe(page, tmp, &list, lru)
		__free_page(page);
	return n;
}

/* Give pages that left the balloon (and the host's hands) to the guest. */
static void vb_release_pages(struct vballoon *vb, struct list_head *list)
{
	struct page *page, *tmp;

	list_for_each_entry_safe(page, tmp, list, lru) {
		list_del(&page->lru);
		__free_page(page);
	}
}

/*
 * Take back what the host is done with on @vq: inflate and deflate
 * buffers (deflated pages waiting for MUST_TELL_HOST go to the guest),
 * or a migration's one-page buffer. Caller holds vb->lock.
 */
static void vb_reap_vq(struct vballoon *vb, struct virtqueue *vq)
{
	unsigned int len;
	struct vb_buf *buf;
	void *token;

	while ((token = virtqueue_get_buf(vq, &len))) {
		if (token == vb->mig_pfns) {
			vb->mig_acked = true;
			continue;
		}
		buf = token;
		vb_release_pages(vb, &buf->pages);
		__set_bit(buf - vb->bufs, &vb->free_bufs);
		WRITE_ONCE(vb->inflight, vb->inflight - 1);
	}
}

/*
 * Both queues, always: the buffers are one pool, and a deflate waiting
 * for room must see the inflate buffers come back too.
 */
static bool vb_has_room(struct vballoon *vb)
{
	vb_reap_vq(vb, vb->inflate_vq);
	vb_reap_vq(vb, vb->deflate_vq);
	return vb->inflight < vb->max_inflight;
}

static bool vb_is_idle(struct vballoon *vb)
{
	vb_has_room(vb);
	return !vb->inflight;
}

static bool vb_mig_done(struct vballoon *vb)
{
	vb_has_room(vb);
	return vb->mig_acked;
}

/*
 * Wait with vb->lock held until @done(), which reaps the queues. The ack
 * count is read before @done() looks, so an ack after it ends the sleep.
 */
static void vb_wait_locked(struct vballoon *vb, bool (*done)(struct vballoon *))
{
	int seen;

	lockdep_assert_held(&vb->lock);
	for (;;) {
		seen = atomic_read(&vb->acks);
		if (done(vb))
			return;
		wait_event(vb->acked, atomic_read(&vb->acks) != seen);
	}
}

/*
 * Take vb->lock once @done() holds, sleeping without it: the OOM notifier
 * and migration get the lock while the host works on an inflate.
 */
static void vb_lock_when(struct vballoon *vb, bool (*done)(struct vballoon *))
{
	int seen;

	for (;;) {
		seen = atomic_read(&vb->acks);
		mutex_lock(&vb->lock);
		if (done(vb))
			return;
		mutex_unlock(&vb->lock);
		wait_event(vb->acked, atomic_read(&vb->acks) != seen);
	}
}

/* A buffer not in flight; there is room (vb_has_room()). Lock held. */
static struct vb_buf *vb_take_buf(struct vballoon *vb)
{
	struct vb_buf *buf = &vb->bufs[__ffs(vb->free_bufs)];

	__clear_bit(buf - vb->bufs, &vb->free_bufs);
	buf->n = 0;
	return buf;
}

static void vb_unget_buf(struct vballoon *vb, struct vb_buf *buf)
{
	__set_bit(buf - vb->bufs, &vb->free_bufs);
}

static void vb_send(struct vballoon *vb, struct virtqueue *vq,
		    struct vb_buf *buf)
{
	struct scatterlist sg;

	sg_init_one(&sg, buf->pfns, sizeof(buf->pfns[0]) * buf->n);
	/* max_inflight never exceeds the queue: there is always room. */
	if (WARN_ON_ONCE(virtqueue_add_outbuf(vq, &sg, 1, buf, GFP_KERNEL))) {
		vb_release_pages(vb, &buf->pages);
		vb_unget_buf(vb, buf);
		return;
	}
	WRITE_ONCE(vb->inflight, vb->inflight + 1);
	virtqueue_kick(vq);
}

/*
 * Tell the host about one page and wait for its ack; inflate buffers may
 * be in flight beside it. Caller holds the lock.
 */
static void vb_tell_one(struct vballoon *vb, struct virtqueue *vq,
			struct page *page)
{
	struct scatterlist sg;
	unsigned int n = 0;

	/* max_inflight leaves a descriptor free, but not on a 1-entry ring. */
	if (!vq->num_free)
		vb_wait_locked(vb, vb_is_idle);
	vb_put_pfns(vb, vb->mig_pfns, &n, page);
	sg_init_one(&sg, vb->mig_pfns, sizeof(vb->mig_pfns));
	vb->mig_acked = false;
	if (WARN_ON_ONCE(virtqueue_add_outbuf(vq, &sg, 1, vb->mig_pfns,
					      GFP_KERNEL)))
		return;
	virtqueue_kick(vq);
	vb_wait_locked(vb, vb_mig_done);
}

/* Guest pages the balloon holds. */
static unsigned long vb_held_pages(struct vballoon *vb)
{
	return READ_ONCE(vb->num_pages) / VB_UNITS_PER_PAGE;
}

/* Guest memory, balloon included, in guest pages. */
static unsigned long vb_ram_pages(struct vballoon *vb)
{
	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM))
		return totalram_pages();
	return totalram_pages() + vb_held_pages(vb);
}

/*
 * The floor: MemAvailable the balloon always leaves the guest, in guest
 * pages. The automatic floor, or the administrator's reserve if higher.
 */
static unsigned long vb_floor(struct vballoon *vb)
{
	return max(vb->floor_pages,
		   (unsigned long)READ_ONCE(vb->reserve_mib) <<
		   (20 - PAGE_SHIFT));
}

/*
 * Inflation stops this far above the floor, and a guest that falls below
 * the floor gets pages back until it is half that far above it again, so
 * the two never take turns on the same pages.
 */
static unsigned long vb_slack(unsigned long floor)
{
	return max(floor / 8, 4UL << (20 - PAGE_SHIFT));
}

/* Pages the kernel holds back above the watermarks after fragmentation. */
static unsigned long vb_boost_pages(void)
{
	unsigned long boost = 0;
	int nid, i;

	for_each_online_node(nid) {
		struct pglist_data *pgdat = NODE_DATA(nid);

		for (i = 0; i < MAX_NR_ZONES; i++)
			boost += READ_ONCE(pgdat->node_zones[i].watermark_boost);
	}
	return boost;
}

/*
 * MemAvailable as the floor counts it. si_mem_available() keeps back the
 * high watermarks but not a watermark boost: after an allocation that
 * fragmented a zone, the kernel raises all its watermarks by up to 1.5
 * times the high one until kswapd has reclaimed that much. A balloon that
 * took the boost would leave the guest's own tasks below their raised min
 * watermark, to the OOM killer: seen on a debug kernel, a 16 MiB task
 * killed with 30 MiB free in the buddy lists against a 22 MiB min
 * watermark and a 12 MiB boost.
 */
static long vb_available(struct vballoon *vb)
{
	/* Pages held by vb_hold_high() go back when the inflate ends. */
	long avail = si_mem_available() + (long)READ_ONCE(vb->nr_high);

	/*
	 * A boost grows by a pageblock at a time: 2 MiB with 4 KiB pages,
	 * but 32 MiB with 16 KiB pages, more than the floor's margin of a
	 * 1 GiB guest, where counting it stopped the balloon short of
	 * targets it had always reached (arm64-16k unload and
	 * over_inflate_idle). It counts where a pageblock fits in the margin.
	 */
	if (pageblock_nr_pages <= vb_slack(vb_floor(vb)))
		avail -= (long)vb_boost_pages();
	return avail;
}

/*
 * Pages the balloon may still take before MemAvailable reaches its stop
 * line, the floor plus the slack; 0 at or under it.
 */
static unsigned long vb_room(struct vballoon *vb)
{
	unsigned long floor = vb_floor(vb);
	unsigned long stop = floor + vb_slack(floor);
	long avail = vb_available(vb);

	return avail > 0 && (unsigned long)avail > stop ? avail - stop : 0;
}

/*
 * Guest pages to give back so the guest holds its floor again, or 0. Only
 * with a reserve set: by default, as with the in-tree driver, the guest's
 * own use does not take pages back from a balloon the host wants kept.
 */
static unsigned long vb_shortfall(struct vballoon *vb)
{
	unsigned long floor = vb_floor(vb);
	long avail;

	if (!READ_ONCE(vb->reserve_mib))
		return 0;
	avail = vb_available(vb);
	if (avail >= 0 && (unsigned long)avail >= floor)
		return 0;
	return floor + vb_slack(floor) / 2 - max(avail, 0L);
}

/* The most the balloon may hold, in 4 KiB units: inflate, max_balloon_pct. */
static unsigned int vb_ceiling(struct vballoon *vb)
{
	u64 units = (u64)vb_ram_pages(vb) * VB_UNITS_PER_PAGE;

	if (!READ_ONCE(vb->inflate))
		return 0;
	units = div_u64(units * READ_ONCE(vb->max_pct), 100);
	return min_t(u64, ALIGN_DOWN(units, VB_UNITS_PER_PAGE), U32_MAX);
}

static u64 vb_now_ms(void)
{
	return ktime_to_ms(ktime_get_boottime());
}

static void vb_update_actual(struct vballoon *vb)
{
	u32 actual = vb->num_pages;

	lockdep_assert_held(&vb->lock);
	/* Balloon config space is little-endian even on legacy devices. */
	virtio_cwrite_le(vb->vdev, struct virtio_balloon_config, actual,
			 &actual);
}

/* Pages per buffer, as the batch parameter says, in whole guest pages. */
static unsigned int vb_batch_pages(void)
{
	return max_t(unsigned int, READ_ONCE(batch.val) / VB_UNITS_PER_PAGE,
		     1);
}

#define VB_GFP		(GFP_HIGHUSER_MOVABLE | __GFP_NOMEMALLOC | \
			 __GFP_NORETRY | __GFP_NOWARN)
/* Only blocks already free: no reclaim, no compaction for a huge block. */
#define VB_HUGE_GFP	(VB_GFP & ~__GFP_RECLAIM)

/*
 * Allocate up to @want pages onto @list: first what is left of a split
 * huge block, then up to @stock single pages (served from this CPU's
 * per-CPU free lists); in a batch that starts on a block boundary, a
 * whole huge block if the guest has one free and @room (pages still
 * wanted this pass) can take it; then single pages in bulk. A block is at
 * least a batch, and a batch that starts with the rest of one is made up
 * with single pages, so the stash empties: the floor is only checked, and
 * a pass can only end, between blocks. Return: pages allocated.
 */
static unsigned int vb_alloc(struct vballoon *vb, struct list_head *list,
			     unsigned int want, unsigned long room,
			     unsigned long stock)
{
	unsigned int n = 0, i;
	struct page *page;

	while (n < want && vb->nr_stash) {
		list_move_tail(vb->stash.next, list);
		vb->nr_stash--;
		n++;
	}
	if (n < want && stock) {
		i = min_t(unsigned long, want - n, stock);
		i = vballoon_alloc_bulk(VB_GFP, i, list);
		WRITE_ONCE(vb->pcp_taken, vb->pcp_taken + i);
		atomic64_add(i, &vb->cnt[VB_CNT_PCP_PAGES]);
		n += i;
	}
	page = NULL;
	if (!n && READ_ONCE(huge_first) && room >= VB_HUGE_PAGES)
		page = alloc_pages(VB_HUGE_GFP, VB_HUGE_ORDER);
	if (page) {
		split_page(page, VB_HUGE_ORDER);
		for (i = 0; i < VB_HUGE_PAGES; i++) {
			if (n < want) {
				list_add_tail(&page[i].lru, list);
				n++;
			} else {
				list_add_tail(&page[i].lru, &vb->stash);
				vb->nr_stash++;
			}
		}
	}
	if (n < want)
		n += vballoon_alloc_bulk(VB_GFP, want - n, list);
	return n;
}

/*
 * Pages to take from this CPU's per-CPU free lists first, when taking
 * @over more pages than the room left would cross the stop line: up to
 * their surplus (vballoon_pcp_surplus(), memory MemAvailable does not
 * count that the lists give back within seconds), so the balloon ends
 * where it would have ended without waiting for them. The caller still
 * checks the stop line before every batch. A task that keeps freeing on
 * this CPU keeps its lists full and refills them from the buddy lists
 * after the balloon took from them: at most half the floor per target is
 * taken this way, so even then the guest keeps half its floor.
 */
static unsigned long vb_pcp_first(struct vballoon *vb, unsigned long over)
{
	unsigned long cap = vb_floor(vb) / 2;

	if (vb->pcp_taken >= cap)
		return 0;
	return min3(over, cap - vb->pcp_taken, vballoon_pcp_surplus());
}

/*
 * Inflate by up to @units 4 KiB units for at most one pass, with up to
 * max_inflight buffers on the queue at once.
 * Return: units added to the balloon.
 */
static unsigned int vb_inflate(struct vballoon *vb, unsigned int units)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(VB_PASS_MS);
	unsigned int per_buf = vb_batch_pages();
	unsigned int pages = units / VB_UNITS_PER_PAGE;
	unsigned int done = 0, want, got, n, order;
	unsigned long room, stock;
	struct page *page, *tmp;
	struct vb_buf *buf;
	u64 t0 = 0;
	LIST_HEAD(list);

	/*
	 * vb->lock is held only to queue each batch: allocation (reclaim)
	 * and waiting for the host happen without it, and a pass stops when
	 * the OOM notifier waits for it.
	 */
	while (done < pages &&
	       (vb->nr_stash || time_before(jiffies, deadline)) &&
	       !atomic_read(&vb->oom_waiting)) {
		want = min(pages - done, per_buf);
		stock = 0;
		if (!vb->nr_stash) {
			/* Every new allocation keeps the floor. */
			room = vb_room(vb);
			if (room < want)
				break;
			if (pages - done > room)
				stock = vb_pcp_first(vb, pages - done - room);
		}
		if (trace_vballoon_inflate_enabled())
			t0 = ktime_get_ns();
		/* Pages left of a split block, or new blocks: huge order. */
		order = vb->nr_stash ? VB_HUGE_ORDER : 0;
		got = vb_alloc(vb, &list, want, pages - done, stock);
		if (got < want) {
			atomic64_inc(&vb->cnt[VB_CNT_ALLOC_FAILURES]);
			atomic64_set(&vb->cnt[VB_CNT_LAST_ALLOC_FAILURE_MS],
				     vb_now_ms());
		}
		n = got - vb_hold_high(vb, &list);
		if (!n && got == want)
			continue;
		if (!n)
			break;
		vb_lock_when(vb, vb_has_room);
		buf = vb_take_buf(vb);
		list_for_each_entry(page, &list, lru)
			vb_put_pfns(vb, buf->pfns, &buf->n, page);
		if (vb->nr_stash)
			order = VB_HUGE_ORDER;
		vballoon_pages_enqueue(vb->pages, &list);
		WRITE_ONCE(vb->num_pages, vb->num_pages + n * VB_UNITS_PER_PAGE);
		done += n;
		atomic64_add(n, &vb->cnt[VB_CNT_INFLATED_PAGES]);
		vb_send(vb, vb->inflate_vq, buf);
		mutex_unlock(&vb->lock);
		trace_vballoon_inflate(n, order, t0 ? ktime_get_ns() - t0 : 0);
		if (got < want)
			break;
	}
	/* A pass ends on a block boundary; this is only a safety net. */
	list_splice_init(&vb->stash, &list);
	vb->nr_stash = 0;
	list_for_each_entry_safe(page, tmp, &list, lru)
		__free_page(page);
	vb_lock_when(vb, vb_is_idle);
	vb_update_actual(vb);
	mutex_unlock(&vb->lock);
	return done * VB_UNITS_PER_PAGE;
}

/*
 * Deflate by up to @units 4 KiB units for at most one pass. Pages leave in
 * the reverse order they came in: the blocks inflated last go back first,
 * whole, so they merge into free huge blocks again.
 * Caller holds vb->lock. Return: units taken out of the balloon.
 */
static unsigned int vb_deflate_locked(struct vballoon *vb, unsigned int units)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(VB_PASS_MS);
	bool tell_first = vb_has(vb, VIRTIO_BALLOON_F_MUST_TELL_HOST);
	unsigned int per_buf = vb_batch_pages();
	unsigned int pages = min(units, vb->num_pages) / VB_UNITS_PER_PAGE;
	unsigned int done = 0, n;
	struct vb_buf *buf;
	struct page *page;
	u64 t0 = 0;

	while (done < pages && time_before(jiffies, deadline)) {
		if (trace_vballoon_deflate_enabled())
			t0 = ktime_get_ns();
		vb_wait_locked(vb, vb_has_room);
		buf = vb_take_buf(vb);
		n = vballoon_pages_dequeue(vb->pages, &buf->pages,
					   min(pages - done, per_buf));
		if (!n) {
			vb_unget_buf(vb, buf);
			break;
		}
		list_for_each_entry(page, &buf->pages, lru)
			vb_put_pfns(vb, buf->pfns, &buf->n, page);
		WRITE_ONCE(vb->num_pages, vb->num_pages - n * VB_UNITS_PER_PAGE);
		done += n;
		/*
		 * With MUST_TELL_HOST the pages wait for the host's ack (see
		 * vb_reap_vq()); otherwise the guest has them back at once and
		 * the host hears of it while the guest already uses them.
		 */
		if (!tell_first)
			vb_release_pages(vb, &buf->pages);
		vb_send(vb, vb->deflate_vq, buf);
		atomic64_add(n, &vb->cnt[VB_CNT_DEFLATED_PAGES]);
		trace_vballoon_deflate(n, 0, t0 ? ktime_get_ns() - t0 : 0);
	}
	vb_wait_locked(vb, vb_is_idle);
	if (done)
		vb_update_actual(vb);
	return done * VB_UNITS_PER_PAGE;
}

static unsigned int vb_deflate(struct vballoon *vb, unsigned int units)
{
	unsigned int n;

	mutex_lock(&vb->lock);
	n = vb_deflate_locked(vb, units);
	mutex_unlock(&vb->lock);
	return n;
}

/*
 * The host's target in 4 KiB units, rounded up to whole guest pages. With
 * 16 or 64 KiB pages a target near 2^32 would round past U32_MAX to 0:
 * such a target gets the most whole pages that fit.
 */
static unsigned int vb_target(struct vballoon *vb)
{
	u32 num_pages;

	/* Balloon config space is little-endian even on legacy devices. */
	virtio_cread_le(vb->vdev, struct virtio_balloon_config, num_pages,
			&num_pages);
	return min_t(u64, ALIGN((u64)num_pages, VB_UNITS_PER_PAGE),
		     ALIGN_DOWN(U32_MAX, VB_UNITS_PER_PAGE));
}

#define VB_WAKE_ADJUST	BIT(0)
#define VB_WAKE_STATS	BIT(1)

/*
 * As the in-tree driver (v6.12): from the interrupt that asks for an
 * adjustment or statistics to the end of the work that answers it, the
 * device's wakeup source is held, so an autosleeping guest does not
 * suspend in between. It exists once user space enables power/wakeup.
 */
static void vb_wake_start(struct vballoon *vb, unsigned int what)
{
	unsigned long flags;

	spin_lock_irqsave(&vb->wake_lock, flags);
	vb->wake_pending |= what;
	if (!vb->waking) {
		vb->waking = true;
		pm_stay_awake(&vb->vdev->dev);
	}
	spin_unlock_irqrestore(&vb->wake_lock, flags);
}

/* A work begins: what it was asked for so far is its to answer. */
static void vb_wake_take(struct vballoon *vb, unsigned int what)
{
	spin_lock_irq(&vb->wake_lock);
	vb->wake_pending &= ~what;
	vb->wake_busy |= what;
	spin_unlock_irq(&vb->wake_lock);
}

/* A work is done (@what 0: every work is stopped): relax if none is due. */
static void vb_wake_done(struct vballoon *vb, unsigned int what)
{
	spin_lock_irq(&vb->wake_lock);
	if (!what)
		vb->wake_pending = 0;
	vb->wake_busy &= what ? ~what : 0;
	if (vb->waking && !vb->wake_pending && !vb->wake_busy) {
		vb->waking = false;
		pm_relax(&vb->vdev->dev);
	}
	spin_unlock_irq(&vb->wake_lock);
}

/*
 * Run the size work after @delay. With @sooner an earlier run already
 * queued stays as it is (the work itself re-arming, or a periodic check);
 * otherwise the new delay replaces it (the host or the admin changed
 * something).
 */
static void vb_queue_size_work(struct vballoon *vb, unsigned long delay,
			       bool sooner)
{
	unsigned long flags;

	spin_lock_irqsave(&vb->stop_lock, flags);
	if (!vb->stop_update) {
		if (sooner)
			queue_delayed_work(vb_wq, &vb->size_work,
					   delay);
		else
			mod_delayed_work(vb_wq, &vb->size_work,
					 delay);
	}
	spin_unlock_irqrestore(&vb->stop_lock, flags);
}

/* Something changed (target, policy): act now, forget the backoff. */
static void vb_kick(struct vballoon *vb)
{
	WRITE_ONCE(vb->backoff_ms, VB_BACKOFF_MIN_MS);
	WRITE_ONCE(vb->retry_at, jiffies);
	vb_queue_size_work(vb, 0, false);
}

/*
 * The balloon holds less than the host asked for: count the target once,
 * and say why now and then.
 */
static void vb_refuse(struct vballoon *vb, unsigned int target,
		      unsigned int goal)
{
	unsigned long retry_at = READ_ONCE(vb->retry_at);
	unsigned long floor = vb_floor(vb);

	if (!vb->refused || vb->refused_target != target) {
		vb->refused = true;
		vb->refused_target = target;
		atomic64_inc(&vb->cnt[VB_CNT_REFUSALS]);
	}
	if (!__ratelimit(&vb->fail_rs))
		return;
	if (!READ_ONCE(vb->inflate))
		dev_info(&vb->vdev->dev,
			 "target %llu KiB not reached: holding %llu KiB, stats-only mode (inflate=0)\n",
			 (u64)target << 2, (u64)READ_ONCE(vb->num_pages) << 2);
	else if (goal < target && READ_ONCE(vb->num_pages) >= goal)
		dev_info(&vb->vdev->dev,
			 "target %llu KiB not reached: holding %llu KiB, at most %u%% of guest memory (max_balloon_pct)\n",
			 (u64)target << 2, (u64)READ_ONCE(vb->num_pages) << 2,
			 READ_ONCE(vb->max_pct));
	else
		dev_info(&vb->vdev->dev,
			 "target %llu KiB not reached: holding %llu KiB, guest keeps %lu KiB available; retrying in %u ms\n",
			 (u64)target << 2, (u64)READ_ONCE(vb->num_pages) << 2,
			 floor << (PAGE_SHIFT - 10),
			 time_after(retry_at, jiffies) ?
			 jiffies_to_msecs(retry_at - jiffies) : 0);
}

/*
 * The guest could not give what the host asked for: look again later
 * rather than spin. The wait doubles each time nothing could be taken and
 * starts over when the host sets a new target.
 */
static void vb_back_off(struct vballoon *vb)
{
	unsigned int wait = READ_ONCE(vb->backoff_ms);

	WRITE_ONCE(vb->retry_at, jiffies + msecs_to_jiffies(wait));
	WRITE_ONCE(vb->backoff_ms, min(wait * 2, VB_BACKOFF_MAX_MS));
}

/* The guest's own use ate into its floor: give pages back. */
static unsigned int vb_hold_floor(struct vballoon *vb, unsigned long short_pages)
{
	unsigned int units = min_t(unsigned long,
				   short_pages * VB_UNITS_PER_PAGE,
				   READ_ONCE(vb->num_pages));
	long avail = vb_available(vb);
	unsigned int done;

	done = vb_deflate(vb, units);
	atomic64_add(done / VB_UNITS_PER_PAGE,
		     &vb->cnt[VB_CNT_RESERVE_DEFLATED_PAGES]);
	trace_vballoon_reserve_deflate(done / VB_UNITS_PER_PAGE,
				       max(avail, 0L), vb_floor(vb));
	return done;
}

static void vb_size_work(struct work_struct *work)
{
	struct vballoon *vb = container_of(to_delayed_work(work),
					   struct vballoon, size_work);
	unsigned int target = vb_target(vb);
	unsigned int goal = min(target, vb_ceiling(vb));
	unsigned int held = READ_ONCE(vb->num_pages);
	unsigned long short_pages = held ? vb_shortfall(vb) : 0;
	unsigned long retry_at = READ_ONCE(vb->retry_at);
	unsigned long next = 0, high;
	unsigned int done = 0;
	bool inflating = false;

	vb_wake_take(vb, VB_WAKE_ADJUST);
	if (target != vb->last_target) {
		vb->prev_target = vb->last_target;
		vb->last_target = target;
		vb->last_target_ms = vb_now_ms();
		WRITE_ONCE(vb->pcp_taken, 0);
		trace_vballoon_target(target, held, goal);
	}

	if (short_pages) {
		done = vb_hold_floor(vb, short_pages);
		vb_back_off(vb);
	} else if (goal > held && time_before(jiffies, retry_at)) {
		next = retry_at - jiffies;
	} else if (goal > held) {
		high = READ_ONCE(vb->nr_high);
		done = vb_inflate(vb, goal - held);
		/* A pass that only found high pages still moved on. */
		inflating = (done || READ_ONCE(vb->nr_high) > high) &&
			    READ_ONCE(vb->num_pages) < goal;
		if (done || inflating)
			WRITE_ONCE(vb->backoff_ms, VB_BACKOFF_MIN_MS);
		else
			vb_back_off(vb);
		retry_at = READ_ONCE(vb->retry_at);
		next = time_after(retry_at, jiffies) ? retry_at - jiffies : 1;
	} else if (goal < held) {
		done = vb_deflate(vb, held - goal);
		/* Every page isolated by migration: they are soon back. */
		next = 1;
	}

	/* Held high pages go back once an inflate is over. */
	if (!inflating)
		vb_release_high(vb);
	held = READ_ONCE(vb->num_pages);
	if (held < target && (short_pages || !(done || inflating)))
		vb_refuse(vb, target, goal);
	else if (held == target)
		vb->refused = false;

	if (done || inflating) {
		vb_queue_size_work(vb, 0, true);
		return;
	}
	/* Reached, or waiting for a retry: the adjustment is over for now. */
	vb_wake_done(vb, VB_WAKE_ADJUST);
	/* While the balloon holds pages, keep an eye on the reserve. */
	if (held && READ_ONCE(vb->reserve_mib))
		next = next ? min(next, msecs_to_jiffies(VB_GUARD_MS)) :
			msecs_to_jiffies(VB_GUARD_MS);
	if (next)
		vb_queue_size_work(vb, next, true);
}

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
static int vb_post_stats(struct vballoon *vb, bool kick)
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

static void vb_stats_work(struct work_struct *work)
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

static void vb_stats_request(struct virtqueue *vq)
{
	struct vballoon *vb = vq->vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&vb->stop_lock, flags);
	if (!vb->stop_update) {
		vb_wake_start(vb, VB_WAKE_STATS);
		queue_work(vb_wq, &vb->stats_work);
	}
	spin_unlock_irqrestore(&vb->stop_lock, flags);
}

static int vb_oom_notify(struct notifier_block *nb, unsigned long unused,
			 void *parm)
{
	struct vballoon *vb = container_of(nb, struct vballoon, oom_nb);
	unsigned long *freed = parm;
	unsigned int units = ALIGN(READ_ONCE(oom_pages.val), VB_UNITS_PER_PAGE);
	unsigned int done = 0, n;

	atomic_inc(&vb->oom_waiting);
	*freed += vb_release_high(vb);
	mutex_lock(&vb->lock);
	/* Frozen or going away: the queues may be gone. */
	while (done < units && !READ_ONCE(vb->stop_update)) {
		n = vb_deflate_locked(vb, units - done);
		if (!n)
			break;
		done += n;
	}
	mutex_unlock(&vb->lock);
	atomic_dec(&vb->oom_waiting);
	atomic64_add(done / VB_UNITS_PER_PAGE, &vb->cnt[VB_CNT_OOM_DEFLATED_PAGES]);
	trace_vballoon_oom_deflate(done / VB_UNITS_PER_PAGE);
	*freed += done / VB_UNITS_PER_PAGE;
	return NOTIFY_OK;
}

static int vb_migrate(void *priv, struct page *newpage, struct page *page)
{
	struct vballoon *vb = priv;

	/*
	 * Inflate or deflate may be waiting for this very compaction; rather
	 * than deadlock or stall it, let migration try again later.
	 */
	if (!mutex_trylock(&vb->lock))
		return -EAGAIN;
	/*
	 * Stopping: the device may be gone; the page goes back instead. A
	 * new page the host cannot be told of stays out of the balloon.
	 */
	if (READ_ONCE(vb->stop_update) || !vb_nameable(newpage)) {
		mutex_unlock(&vb->lock);
		return -EAGAIN;
	}
	vb_tell_one(vb, vb->inflate_vq, newpage);
	vb_tell_one(vb, vb->deflate_vq, page);
	mutex_unlock(&vb->lock);
	atomic64_inc(&vb->cnt[VB_CNT_MIGRATED_PAGES]);
	trace_vballoon_migrate(page_to_pfn(page), page_to_pfn(newpage));
	return 0;
}

/*
 * Free page hinting. While the host migrates the guest it writes a fresh
 * command id to config; the guest answers on the hint queue with that id,
 * then with free blocks of the largest order (cheap to find, cheap for the
 * host to skip), then with the stop id. The host skips those blocks'
 * contents; the guest holds them until the host says DONE, or hands them
 * back at once through the shrinker when it needs memory, and then the
 * round ends: it takes nothing more until the host's next command id.
 */
static u32 vb_hint_cmd_id(struct vballoon *vb)
{
	struct vb_hint *h = &vb->hint;

	u32 id;

	if (test_and_clear_bit(0, &h->reread)) {
		virtio_cread_le(vb->vdev, struct virtio_balloon_config,
				free_page_hint_cmd_id, &id);
		WRITE_ONCE(h->cmd_id, id);
	}
	return h->cmd_id;
}

/* Detach what the host used; true if a block fits beside the stop id. */
static bool vb_hint_reap_locked(struct vb_hint *h)
{
	unsigned int len;
	void *token;

	lockdep_assert_held(&h->lock);
	while ((token = virtqueue_get_buf(h->vq, &len))) {
		if (token != &h->active && token != &h->stop)
			list_move(&((struct page *)token)->lru, &h->used);
	}
	return h->vq->num_free > 1;
}

/*
 * Give up to @n hinted blocks back to the guest: used ones first, then,
 * unless @used_only, those still in the ring, which only a host that is
 * DONE, or a device reset, lets go of. Return: how many.
 */
static unsigned long vb_hint_release(struct vballoon *vb, unsigned long n,
				     bool used_only)
{
	struct vb_hint *h = &vb->hint;
	struct page *page, *tmp;
	unsigned long done = 0;
	LIST_HEAD(list);

	spin_lock(&h->lock);
	if (h->vq)
		vb_hint_reap_locked(h);
	while (done < n && !list_empty(&h->used)) {
		list_move(h->used.next, &list);
		done++;
	}
	while (!used_only && done < n && !list_empty(&h->ring)) {
		list_move(h->ring.next, &list);
		done++;
	}
	WRITE_ONCE(h->nr_blocks, h->nr_blocks - done);
	spin_unlock(&h->lock);

	list_for_each_entry_safe(page, tmp, &list, lru) {
		list_del(&page->lru);
		__free_pages(page, VB_HINT_ORDER);
	}
	return done;
}

static unsigned long vb_hint_count(struct shrinker *shrinker,
				   struct shrink_control *sc)
{
	struct vballoon *vb = vballoon_shrinker_private(shrinker);

	return READ_ONCE(vb->hint.nr_blocks) << VB_HINT_ORDER;
}

static unsigned long vb_hint_scan(struct shrinker *shrinker,
				  struct shrink_control *sc)
{
	struct vballoon *vb = vballoon_shrinker_private(shrinker);
	unsigned long blocks = DIV_ROUND_UP(sc->nr_to_scan, 1UL << VB_HINT_ORDER);
	unsigned long freed;

	/*
	 * Else the round would take each block back as soon as it is free,
	 * and whoever needs the memory would wait on the race.
	 */
	set_bit(0, &vb->hint.squeezed);
	/* Blocks still in the ring are the host's until it uses them. */
	freed = vb_hint_release(vb, blocks, true);
	return freed ? freed << VB_HINT_ORDER : SHRINK_STOP;
}

static bool vb_hint_reap(struct vballoon *vb)
{
	struct vb_hint *h = &vb->hint;
	bool room;

	spin_lock(&h->lock);
	room = vb_hint_reap_locked(h);
	spin_unlock(&h->lock);
	return room;
}

static int vb_hint_send_id(struct vballoon *vb, __virtio32 *id)
{
	struct vb_hint *h = &vb->hint;
	struct scatterlist sg;
	int err;

	sg_init_one(&sg, id, sizeof(*id));
	spin_lock(&h->lock);
	vb_hint_reap_locked(h);
	err = virtqueue_add_outbuf(h->vq, &sg, 1, id, GFP_ATOMIC);
	if (!err)
		virtqueue_kick(h->vq);
	spin_unlock(&h->lock);
	return err;
}

/* Hint free blocks until none are left or the host moves on. */
static int vb_hint_send_blocks(struct vballoon *vb, u32 id,
			       unsigned long *blocks)
{
	struct vb_hint *h = &vb->hint;
	struct scatterlist sg;
	struct page *page;
	int err;

	while (vb_hint_cmd_id(vb) == id && !test_bit(0, &h->squeezed) &&
	       !test_bit(0, &h->paused) && !READ_ONCE(vb->stop_update)) {
		if (!vb_hint_reap(vb)) {
			/*
			 * Queue full: the host is behind. No interrupt tells
			 * when it catches up (see vb_init_vqs): look again in
			 * 10 ms, sleeping, not in a spin.
			 */
			wait_event_timeout(vb->acked, test_bit(0, &h->reread) ||
					   test_bit(0, &h->paused),
					   msecs_to_jiffies(10));
			continue;
		}
		/*
		 * A round takes hundreds of blocks, each zeroed where
		 * init_on_alloc is on: without preemption (5.10) that held
		 * the CPU until RCU reported a stall.
		 */
		cond_resched();
		page = alloc_pages(VB_HINT_GFP, VB_HINT_ORDER);
		if (!page)
			return 0;
		sg_init_one(&sg, page_address(page),
			    PAGE_SIZE << VB_HINT_ORDER);
		spin_lock(&h->lock);
		/* One entry, no indirect table (see vb_validate()): no allocation. */
		err = virtqueue_add_inbuf(h->vq, &sg, 1, page, GFP_ATOMIC);
		if (!err) {
			virtqueue_kick(h->vq);
			list_add(&page->lru, &h->ring);
			WRITE_ONCE(h->nr_blocks, h->nr_blocks + 1);
		}
		spin_unlock(&h->lock);
		if (err) {
			__free_pages(page, VB_HINT_ORDER);
			return err;
		}
		(*blocks)++;
	}
	return 0;
}

static void vb_hint_work(struct work_struct *work)
{
	struct vballoon *vb = container_of(work, struct vballoon, hint.work);
	struct vb_hint *h = &vb->hint;
	u32 id = vb_hint_cmd_id(vb);
	u64 t0 = ktime_get_ns();
	unsigned long blocks = 0;
	int err;

	if (id == VIRTIO_BALLOON_CMD_ID_DONE) {
		/* The host has let go of every block, used or not. */
		vb_hint_release(vb, ULONG_MAX, false);
		return;
	}
	if (id == VIRTIO_BALLOON_CMD_ID_STOP ||
	    id == virtio32_to_cpu(vb->vdev, h->active))
		return;

	h->active = cpu_to_virtio32(vb->vdev, id);
	clear_bit(0, &h->squeezed);
	atomic64_inc(&vb->cnt[VB_CNT_HINT_ROUNDS]);
	err = vb_hint_send_id(vb, &h->active);
	if (!err)
		err = vb_hint_send_blocks(vb, id, &blocks);
	if (!err)
		err = vb_hint_send_id(vb, &h->stop);
	atomic64_add(blocks << VB_HINT_ORDER, &vb->cnt[VB_CNT_HINTED_PAGES]);
	trace_vballoon_hint_round(id, blocks << VB_HINT_ORDER, VB_HINT_ORDER,
				  ktime_get_ns() - t0);
	if (err)
		dev_err_ratelimited(&vb->vdev->dev,
				    "free page hint round %u failed: %d\n",
				    id, err);
}

static void vb_hint_kick(struct vballoon *vb)
{
	if (!vb->hint.wq)
		return;
	set_bit(0, &vb->hint.reread);
	/* A round waiting for room must notice a new command id. */
	wake_up(&vb->acked);
	queue_work(vb->hint.wq, &vb->hint.work);
}

#ifdef CONFIG_PM_SLEEP
/*
 * The freezer waits for the hint work (its queue is freezable): a round
 * ends when suspend or hibernation begins, whatever the host does.
 */
static int vb_hint_pm_notify(struct notifier_block *nb, unsigned long action,
			     void *unused)
{
	struct vballoon *vb = container_of(nb, struct vballoon, hint.pm_nb);

	switch (action) {
	case PM_HIBERNATION_PREPARE:
	case PM_SUSPEND_PREPARE:
		set_bit(0, &vb->hint.paused);
		wake_up(&vb->acked);
		break;
	case PM_POST_HIBERNATION:
	case PM_POST_SUSPEND:
	case PM_POST_RESTORE:
		clear_bit(0, &vb->hint.paused);
		break;
	}
	return NOTIFY_DONE;
}
#endif

static int vb_hint_init(struct vballoon *vb)
{
	struct vb_hint *h = &vb->hint;

	INIT_WORK(&h->work, vb_hint_work);
	h->stop = cpu_to_virtio32(vb->vdev, VIRTIO_BALLOON_CMD_ID_STOP);
	h->active = cpu_to_virtio32(vb->vdev, VIRTIO_BALLOON_CMD_ID_STOP);
	if (!vb_has(vb, VIRTIO_BALLOON_F_FREE_PAGE_HINT))
		return 0;
	/* A round needs the command id and at least one block on the queue. */
	if (virtqueue_get_vring_size(h->vq) < 2) {
		dev_warn(&vb->vdev->dev,
			 "free page hint queue holds %u entry, a round needs 2: not hinting\n",
			 virtqueue_get_vring_size(h->vq));
		return 0;
	}

	h->wq = alloc_workqueue("vballoon-hint", WQ_FREEZABLE | WQ_CPU_INTENSIVE |
				VBALLOON_WQ_PERCPU, 0);
	if (!h->wq)
		return -ENOMEM;
	h->shrinker = vballoon_shrinker_create(vb_hint_count, vb_hint_scan, vb,
					       "vballoon-hint");
	if (!h->shrinker) {
		destroy_workqueue(h->wq);
		return -ENOMEM;
	}
#ifdef CONFIG_PM_SLEEP
	h->pm_nb.notifier_call = vb_hint_pm_notify;
	register_pm_notifier(&h->pm_nb);
#endif
	return 0;
}

static void vb_hint_exit(struct vballoon *vb)
{
	if (!vb->hint.wq)
		return;
#ifdef CONFIG_PM_SLEEP
	unregister_pm_notifier(&vb->hint.pm_nb);
#endif
	vballoon_shrinker_destroy(vb->hint.shrinker);
	destroy_workqueue(vb->hint.wq);
}

/*
 * Free page reporting: the kernel hands over free blocks of at least the
 * reporting order; the host discards their contents; the guest gets them
 * back as they were handed over, zeroed or poisoned as the host knows.
 */
static int vb_report(struct page_reporting_dev_info *pr,
		     struct scatterlist *sg, unsigned int nents)
{
	struct vballoon *vb = container_of(pr, struct vballoon, reporting);
	struct virtqueue *vq = vb->reporting_vq;
	struct scatterlist *s;
	unsigned int len, i;
	u64 bytes = 0;
	int err;

	/* The queue holds a whole report: checked at probe. */
	err = virtqueue_add_inbuf(vq, sg, nents, vb, GFP_NOWAIT | __GFP_NOWARN);
	if (WARN_ON_ONCE(err))
		return err;
	virtqueue_kick(vq);
	wait_event(vb->acked, virtqueue_get_buf(vq, &len));
	for_each_sg(sg, s, nents, i)
		bytes += s->length;
	atomic64_inc(&vb->cnt[VB_CNT_REPORTS]);
	atomic64_add(bytes, &vb->cnt[VB_CNT_REPORTED_BYTES]);
	trace_vballoon_report(nents, bytes);
	return 0;
}

/*
 * The default reporting order: 2 MiB blocks whatever the guest's page
 * size (order 9 with 4 KiB pages, 7 with 16 KiB, 5 with 64 KiB), the size
 * of the host's transparent huge pages. The kernel's own default, the
 * pageblock order, is 32 MiB with 16 KiB pages: page reporting then waits
 * for 32 such blocks free above the low watermark (1 GiB), which a small
 * guest never has, and nothing is ever reported.
 */
static unsigned int vb_report_order(void)
{
	unsigned int order = READ_ONCE(report_order.val);

	if (order)
		return order;
	return min_t(unsigned int, pageblock_order,
		     ilog2(SZ_2M >> PAGE_SHIFT));
}

static int vb_reporting_init(struct vballoon *vb)
{
	unsigned int size, asked, order;
	int err;

	if (!vb_has(vb, VIRTIO_BALLOON_F_REPORTING))
		return 0;
	size = virtqueue_get_vring_size(vb->reporting_vq);
	if (!vballoon_reporting_capacity(&vb->reporting, size)) {
		dev_err(&vb->vdev->dev,
			"reporting queue holds %u entries, a report needs %u\n",
			size, PAGE_REPORTING_CAPACITY);
		return -ENOSPC;
	}
	vb->reporting.report = vb_report;
	asked = vb_report_order();
	order = vballoon_reporting_order(&vb->reporting, asked);
	if (order != asked && READ_ONCE(report_order.val))
		dev_info(&vb->vdev->dev,
			 "report_order %u: this kernel reports blocks of order %u\n",
			 asked, order);
	/*
	 * The kernel takes one reporting device; another (a second balloon)
	 * holding it is no reason to leave this one without a balloon.
	 */
	err = page_reporting_register(&vb->reporting);
	if (err == -EBUSY) {
		dev_info(&vb->vdev->dev,
			 "free page reporting is taken by another device: not reporting\n");
		return 0;
	}
	if (!err)
		vb->reporting_on = true;
	return err;
}

static void vb_reporting_exit(struct vballoon *vb)
{
	if (vb->reporting_on)
		page_reporting_unregister(&vb->reporting);
	vb->reporting_on = false;
}

/*
 * sysfs: /sys/bus/virtio/devices/virtioN/balloon/. Documented in
 * Documentation/ABI/testing/sysfs-bus-virtio-devices-vballoon.
 */
static struct vballoon *vb_from_dev(struct device *dev)
{
	return dev_to_virtio(dev)->priv;
}

static ssize_t target_pages_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n",
			  vb_target(vb_from_dev(dev)) / VB_UNITS_PER_PAGE);
}
static DEVICE_ATTR_RO(target_pages);

static ssize_t target_bytes_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", (u64)vb_target(vb_from_dev(dev)) <<
			  VIRTIO_BALLOON_PFN_SHIFT);
}
static DEVICE_ATTR_RO(target_bytes);

static ssize_t actual_pages_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n", vb_held_pages(vb_from_dev(dev)));
}
static DEVICE_ATTR_RO(actual_pages);

static ssize_t actual_bytes_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  (u64)READ_ONCE(vb_from_dev(dev)->num_pages) <<
			  VIRTIO_BALLOON_PFN_SHIFT);
}
static DEVICE_ATTR_RO(actual_bytes);

static const char * const vb_feature_names[] = {
	[VIRTIO_BALLOON_F_MUST_TELL_HOST] = "must_tell_host",
	[VIRTIO_BALLOON_F_STATS_VQ] = "stats_vq",
	[VIRTIO_BALLOON_F_DEFLATE_ON_OOM] = "deflate_on_oom",
	[VIRTIO_BALLOON_F_FREE_PAGE_HINT] = "free_page_hint",
	[VIRTIO_BALLOON_F_PAGE_POISON] = "page_poison",
	[VIRTIO_BALLOON_F_REPORTING] = "reporting",
};

static ssize_t features_show(struct device *dev,
			     struct device_attribute *attr, char *buf)
{
	struct vballoon *vb = vb_from_dev(dev);
	ssize_t len = 0;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(vb_feature_names); i++)
		if (vb_has(vb, i))
			len += sysfs_emit_at(buf, len, "%s%s", len ? " " : "",
					     vb_feature_names[i]);
	return len + sysfs_emit_at(buf, len, "\n");
}
static DEVICE_ATTR_RO(features);

static ssize_t floor_mib_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n",
			  vb_floor(vb_from_dev(dev)) >> (20 - PAGE_SHIFT));
}
static DEVICE_ATTR_RO(floor_mib);

static ssize_t reserve_mib_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(vb_from_dev(dev)->reserve_mib));
}

static ssize_t reserve_mib_store(struct device *dev,
				 struct device_attribute *attr,
				 const char *buf, size_t count)
{
	struct vballoon *vb = vb_from_dev(dev);
	unsigned int n;

	if (kstrtouint(buf, 0, &n) || n > vb_ram_mib(vb_held_pages(vb)))
		return -EINVAL;
	WRITE_ONCE(vb->reserve_mib, n);
	vb_kick(vb);
	return count;
}
static DEVICE_ATTR_RW(reserve_mib);

static ssize_t max_balloon_pct_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(vb_from_dev(dev)->max_pct));
}

static ssize_t max_balloon_pct_store(struct device *dev,
				     struct device_attribute *attr,
				     const char *buf, size_t count)
{
	struct vballoon *vb = vb_from_dev(dev);
	unsigned int n;

	if (kstrtouint(buf, 0, &n) || n < max_balloon_pct.min ||
	    n > max_balloon_pct.max)
		return -EINVAL;
	WRITE_ONCE(vb->max_pct, n);
	vb_kick(vb);
	return count;
}
static DEVICE_ATTR_RW(max_balloon_pct);

static ssize_t inflate_show(struct device *dev,
			    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(vb_from_dev(dev)->inflate));
}

static ssize_t inflate_store(struct device *dev, struct device_attribute *attr,
			     const char *buf, size_t count)
{
	struct vballoon *vb = vb_from_dev(dev);
	bool on;

	if (kstrtobool(buf, &on))
		return -EINVAL;
	WRITE_ONCE(vb->inflate, on);
	vb_kick(vb);
	return count;
}
static DEVICE_ATTR_RW(inflate);

/* A read-only counter: the attribute and the counter it shows. */
struct vb_counter_attr {
	struct device_attribute attr;
	enum vb_counter idx;
};

static ssize_t vb_counter_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct vb_counter_attr *ca = container_of(attr, struct vb_counter_attr,
						  attr);

	return sysfs_emit(buf, "%lld\n",
			  atomic64_read(&vb_from_dev(dev)->cnt[ca->idx]));
}

#define VB_COUNTER_ATTR(_name, _idx)					\
	static struct vb_counter_attr vb_counter_attr_##_name = {	\
		.attr = __ATTR(_name, 0444, vb_counter_show, NULL),	\
		.idx = _idx,						\
	}

VB_COUNTER_ATTR(inflated_pages, VB_CNT_INFLATED_PAGES);
VB_COUNTER_ATTR(deflated_pages, VB_CNT_DEFLATED_PAGES);
VB_COUNTER_ATTR(oom_deflated_pages, VB_CNT_OOM_DEFLATED_PAGES);
VB_COUNTER_ATTR(reserve_deflated_pages, VB_CNT_RESERVE_DEFLATED_PAGES);
VB_COUNTER_ATTR(migrated_pages, VB_CNT_MIGRATED_PAGES);
VB_COUNTER_ATTR(alloc_failures, VB_CNT_ALLOC_FAILURES);
VB_COUNTER_ATTR(last_alloc_failure_ms, VB_CNT_LAST_ALLOC_FAILURE_MS);
VB_COUNTER_ATTR(refusals, VB_CNT_REFUSALS);
VB_COUNTER_ATTR(hint_rounds, VB_CNT_HINT_ROUNDS);
VB_COUNTER_ATTR(hinted_pages, VB_CNT_HINTED_PAGES);
VB_COUNTER_ATTR(reports, VB_CNT_REPORTS);
VB_COUNTER_ATTR(reported_bytes, VB_CNT_REPORTED_BYTES);
VB_COUNTER_ATTR(stats_requests, VB_CNT_STATS_REQUESTS);
VB_COUNTER_ATTR(pcp_pages, VB_CNT_PCP_PAGES);
VB_COUNTER_ATTR(high_pages, VB_CNT_HIGH_PAGES);

static struct attribute *vb_attrs[] = {
	&dev_attr_target_pages.attr,
	&dev_attr_target_bytes.attr,
	&dev_attr_actual_pages.attr,
	&dev_attr_actual_bytes.attr,
	&dev_attr_features.attr,
	&dev_attr_floor_mib.attr,
	&dev_attr_reserve_mib.attr,
	&dev_attr_max_balloon_pct.attr,
	&dev_attr_inflate.attr,
	&vb_counter_attr_inflated_pages.attr.attr,
	&vb_counter_attr_deflated_pages.attr.attr,
	&vb_counter_attr_oom_deflated_pages.attr.attr,
	&vb_counter_attr_reserve_deflated_pages.attr.attr,
	&vb_counter_attr_migrated_pages.attr.attr,
	&vb_counter_attr_alloc_failures.attr.attr,
	&vb_counter_attr_last_alloc_failure_ms.attr.attr,
	&vb_counter_attr_refusals.attr.attr,
	&vb_counter_attr_hint_rounds.attr.attr,
	&vb_counter_attr_hinted_pages.attr.attr,
	&vb_counter_attr_reports.attr.attr,
	&vb_counter_attr_reported_bytes.attr.attr,
	&vb_counter_attr_stats_requests.attr.attr,
	&vb_counter_attr_pcp_pages.attr.attr,
	&vb_counter_attr_high_pages.attr.attr,
	NULL,
};

static const struct attribute_group vb_attr_group = {
	.name = "balloon",
	.attrs = vb_attrs,
};

/*
 * debugfs: /sys/kernel/debug/vballoon/virtioN, the state a developer
 * debugging a host wants. Sizes in guest pages unless said otherwise; no
 * kernel addresses.
 */
static struct dentry *vb_debugfs_root;

static const char * const vb_stat_names[VB_STATS_MAX] = {
	[VIRTIO_BALLOON_S_SWAP_IN] = "swap_in",
	[VIRTIO_BALLOON_S_SWAP_OUT] = "swap_out",
	[VIRTIO_BALLOON_S_MAJFLT] = "major_faults",
	[VIRTIO_BALLOON_S_MINFLT] = "minor_faults",
	[VIRTIO_BALLOON_S_MEMFREE] = "free",
	[VIRTIO_BALLOON_S_MEMTOT] = "total",
	[VIRTIO_BALLOON_S_AVAIL] = "available",
	[VIRTIO_BALLOON_S_CACHES] = "caches",
	[VIRTIO_BALLOON_S_HTLB_PGALLOC] = "hugetlb_allocations",
	[VIRTIO_BALLOON_S_HTLB_PGFAIL] = "hugetlb_failures",
	[VIRTIO_BALLOON_S_OOM_KILL] = "oom_kills",
	[VIRTIO_BALLOON_S_ALLOC_STALL] = "alloc_stalls",
	[VIRTIO_BALLOON_S_ASYNC_SCAN] = "async_scans",
	[VIRTIO_BALLOON_S_DIRECT_SCAN] = "direct_scans",
	[VIRTIO_BALLOON_S_ASYNC_RECLAIM] = "async_reclaims",
	[VIRTIO_BALLOON_S_DIRECT_RECLAIM] = "direct_reclaims",
};

static void vb_debugfs_zones(struct seq_file *m, struct vballoon *vb)
{
	struct pglist_data *pgdat = NODE_DATA(first_online_node);
	unsigned long by_zone[MAX_NR_ZONES];
	int i;

	vballoon_pages_by_zone(vb->pages, by_zone);
	seq_puts(m, "pages_by_zone:");
	for (i = 0; i < MAX_NR_ZONES; i++)
		if (by_zone[i])
			seq_printf(m, " %s=%lu", pgdat->node_zones[i].name,
				   by_zone[i]);
	seq_putc(m, '\n');
}

static int vb_debugfs_show(struct seq_file *m, void *unused)
{
	struct vballoon *vb = m->private;
	unsigned long floor = vb_floor(vb);
	unsigned long retry_at = READ_ONCE(vb->retry_at);
	unsigned int i, tag;

	seq_printf(m, "target_units: %u\n", vb_target(vb));
	seq_printf(m, "actual_units: %u\n", READ_ONCE(vb->num_pages));
	seq_printf(m, "goal_units: %u\n", min(vb_target(vb), vb_ceiling(vb)));
	seq_printf(m, "last_target_change: %u units from %u, %llu ms ago\n",
		   vb->last_target, vb->prev_target,
		   vb->last_target_ms ? vb_now_ms() - vb->last_target_ms : 0);
	seq_printf(m, "mem_available: %ld\n", si_mem_available());
	seq_printf(m, "watermark_boost: %lu\n", vb_boost_pages());
	seq_printf(m, "pcp_surplus: %lu (reading CPU), taken for this target %lu\n",
		   vballoon_pcp_surplus(), READ_ONCE(vb->pcp_taken));
	seq_printf(m, "floor: %lu (automatic %lu, reserve %u MiB), slack %lu\n",
		   floor, vb->floor_pages, READ_ONCE(vb->reserve_mib),
		   vb_slack(floor));
	seq_printf(m, "ceiling_units: %u\n", vb_ceiling(vb));
	seq_printf(m, "backoff_ms: %u, next inflate in %u ms\n",
		   READ_ONCE(vb->backoff_ms),
		   time_after(retry_at, jiffies) ?
		   jiffies_to_msecs(retry_at - jiffies) : 0);
	seq_printf(m, "buffers_in_flight: %u of %u\n", READ_ONCE(vb->inflight),
		   vb->max_inflight);
	seq_printf(m, "page_migration: %s\n", vballoon_pages_scheme());
	seq_printf(m, "isolated_pages: %lu\n",
		   vballoon_pages_isolated(vb->pages));
	vb_debugfs_zones(m, vb);
	if (vb->hint.wq)
		seq_printf(m, "hint: cmd_id %u, blocks held %lu of order %u\n",
			   READ_ONCE(vb->hint.cmd_id),
			   READ_ONCE(vb->hint.nr_blocks), VB_HINT_ORDER);
	if (!vb->stats_vq)
		return 0;
	seq_puts(m, "last_stats:");
	for (i = 0; i < READ_ONCE(vb->nr_stats); i++) {
		tag = virtio16_to_cpu(vb->vdev, vb->stats[i].tag);
		seq_printf(m, " %s=%llu",
			   tag < VB_STATS_MAX ? vb_stat_names[tag] : "?",
			   virtio64_to_cpu(vb->vdev, vb->stats[i].val));
	}
	seq_putc(m, '\n');
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(vb_debugfs);

static void vb_config_changed(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&vb->stop_lock, flags);
	if (!vb->stop_update) {
		vb_wake_start(vb, VB_WAKE_ADJUST);
		vb_hint_kick(vb);
	}
	spin_unlock_irqrestore(&vb->stop_lock, flags);
	vb_kick(vb);
}

static int vb_init_vqs(struct vballoon *vb)
{
	vq_callback_t *callbacks[VB_VQ_MAX] = { vb_ack, vb_ack };
	const char *names[VB_VQ_MAX] = { "inflate", "deflate" };
	struct virtqueue *vqs[VB_VQ_MAX] = {};
	int err;

	if (vb_has(vb, VIRTIO_BALLOON_F_STATS_VQ)) {
		callbacks[VB_VQ_STATS] = vb_stats_request;
		names[VB_VQ_STATS] = "stats";
	}
	/*
	 * The free page queue gets no callback, hence no interrupt vector
	 * and interrupts suppressed: the hint work reaps it by polling, and
	 * a round of thousands of blocks costs no interrupt per block.
	 */
	if (vb_has(vb, VIRTIO_BALLOON_F_FREE_PAGE_HINT))
		names[VB_VQ_HINT] = "free_page_vq";
	if (vb_has(vb, VIRTIO_BALLOON_F_REPORTING)) {
		callbacks[VB_VQ_REPORTING] = vb_ack;
		names[VB_VQ_REPORTING] = "reporting_vq";
	}
	err = vballoon_find_vqs(vb->vdev, VB_VQ_MAX, vqs, callbacks, names);
	if (err)
		return err;

	vb->inflate_vq = vqs[VB_VQ_INFLATE];
	vb->deflate_vq = vqs[VB_VQ_DEFLATE];
	/* One descriptor stays free for a migration's one-page buffer. */
	vb->max_inflight = clamp(min(virtqueue_get_vring_size(vb->inflate_vq),
				     virtqueue_get_vring_size(vb->deflate_vq)) - 1,
				 1U, (unsigned int)VB_BUFS);
	spin_lock(&vb->hint.lock);
	vb->hint.vq = vqs[VB_VQ_HINT];
	spin_unlock(&vb->hint.lock);
	vb->reporting_vq = vqs[VB_VQ_REPORTING];
	vb->stats_vq = NULL;
	vb->vqs_live = true;
	if (vb_has(vb, VIRTIO_BALLOON_F_STATS_VQ)) {
		vb->stats_vq = vqs[VB_VQ_STATS];
		/*
		 * Prime the queue so the host can ask for figures; the kick
		 * waits for DRIVER_OK (vb_device_ready()).
		 */
		err = vb_post_stats(vb, false);
		if (err) {
			vb->vdev->config->del_vqs(vb->vdev);
			vb->vqs_live = false;
			return err;
		}
	}
	return 0;
}

/*
 * The smallest MemAvailable the balloon leaves the guest: 1/32 of its
 * memory, at least 32 MiB (the tail of Hyper-V's balloon floor). Below it
 * a guest holding unreclaimable memory (tmpfs, no swap) is at the OOM
 * killer's mercy, and a guest with nothing left to kill panics.
 */
static unsigned long vb_default_floor(void)
{
	unsigned long total = totalram_pages();

	return max(total / 32, 32UL << (20 - PAGE_SHIFT));
}

static int vb_validate(struct virtio_device *vdev)
{
	/*
	 * The device is handed guest-physical page numbers: it must not see
	 * them through an IOMMU.
	 */
	__virtio_clear_bit(vdev, VIRTIO_F_ACCESS_PLATFORM);

	/*
	 * A page report adds up to 32 entries with GFP_NOWAIT while the
	 * pages are held: no indirect table to allocate then.
	 */
	__virtio_clear_bit(vdev, VIRTIO_RING_F_INDIRECT_DESC);

	/*
	 * Nothing to tell the host if freed pages keep no known content. If
	 * they do and the host cannot be told, reporting would let the host
	 * change free pages under the guest's poison checks: go without it.
	 */
	if (!want_init_on_free() && !vballoon_poisoning())
		__virtio_clear_bit(vdev, VIRTIO_BALLOON_F_PAGE_POISON);
	else if (!virtio_has_feature(vdev, VIRTIO_BALLOON_F_PAGE_POISON))
		__virtio_clear_bit(vdev, VIRTIO_BALLOON_F_REPORTING);
	return 0;
}

static void vb_write_poison(struct vballoon *vb)
{
	/* init_on_free leaves freed pages zeroed: poison value 0. */
	u32 poison = 0;

	if (!vb_has(vb, VIRTIO_BALLOON_F_PAGE_POISON))
		return;
	if (!want_init_on_free())
		memset(&poison, PAGE_POISON, sizeof(poison));
	virtio_cwrite_le(vb->vdev, struct virtio_balloon_config, poison_val,
			 &poison);
}

/* DRIVER_OK, then the notifications the spec holds back until it. */
static void vb_device_ready(struct vballoon *vb)
{
	vb_write_poison(vb);
	virtio_device_ready(vb->vdev);
	if (vb->stats_vq)
		virtqueue_kick(vb->stats_vq);
}

/* Give every page back to the guest, tell the host, reset the device. */
static void vb_empty_and_reset(struct vballoon *vb)
{
	/* A failed restore left no queue to give pages back on. */
	if (!vb->vqs_live)
		return;
	while (vb->num_pages) {
		if (!vb_deflate(vb, vb->num_pages))
			/* Pages isolated by migration come back shortly. */
			msleep(20);
	}
	mutex_lock(&vb->lock);
	vb_update_actual(vb);
	mutex_unlock(&vb->lock);
	vballoon_reset_device(vb->vdev);
	/* Reset, the device holds no block: a round's go back too. */
	spin_lock(&vb->hint.lock);
	vb->hint.vq = NULL;
	spin_unlock(&vb->hint.lock);
	vb_hint_release(vb, ULONG_MAX, false);
	vb->vdev->config->del_vqs(vb->vdev);
	vb->vqs_live = false;
}

/*
 * No more work: interrupts queue none, and the work queued or running is
 * waited for. A hint round sees stop_update and ends.
 */
static void vb_stop_updates(struct vballoon *vb)
{
	spin_lock_irq(&vb->stop_lock);
	WRITE_ONCE(vb->stop_update, true);
	spin_unlock_irq(&vb->stop_lock);
	cancel_delayed_work_sync(&vb->size_work);
	vb_release_high(vb);
	cancel_work_sync(&vb->stats_work);
	vb_wake_done(vb, 0);
	if (vb->hint.wq) {
		/* Let a round waiting for room see the end. */
		set_bit(0, &vb->hint.reread);
		wake_up(&vb->acked);
		cancel_work_sync(&vb->hint.work);
	}
}

/*
 * Stop everything that could still use the device: page reporting, the
 * OOM notifier and every work. Once only: at remove, or first at reboot.
 */
static void vb_quiesce(struct vballoon *vb)
{
	if (vb->quiesced)
		return;
	vb->quiesced = true;
	vb_reporting_exit(vb);
	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM))
		unregister_oom_notifier(&vb->oom_nb);
	vb_stop_updates(vb);
}

/*
 * Reboot, power off and kexec run the reboot notifiers before the devices'
 * shutdown, where the virtio bus may break and reset the device: a work
 * still adding buffers then would find the queues broken.
 */
static int vb_reboot_notify(struct notifier_block *nb, unsigned long action,
			    void *unused)
{
	struct vballoon *vb = container_of(nb, struct vballoon, reboot_nb);

	vb_quiesce(vb);
	return NOTIFY_DONE;
}

static int vb_probe(struct virtio_device *vdev)
{
	struct vballoon *vb;
	unsigned int i;
	int err;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "config space is not readable\n");
		return -EINVAL;
	}

	vb = kzalloc(sizeof(*vb), GFP_KERNEL);
	if (!vb)
		return -ENOMEM;
	vb->bufs = kcalloc(VB_BUFS, sizeof(*vb->bufs), GFP_KERNEL);
	if (!vb->bufs) {
		err = -ENOMEM;
		goto err_free_vb;
	}
	for (i = 0; i < VB_BUFS; i++)
		INIT_LIST_HEAD(&vb->bufs[i].pages);
	vb->free_bufs = GENMASK(VB_BUFS - 1, 0);
	INIT_LIST_HEAD(&vb->stash);
	spin_lock_init(&vb->high_lock);
	INIT_LIST_HEAD(&vb->high);
	spin_lock_init(&vb->wake_lock);
	spin_lock_init(&vb->hint.lock);
	INIT_LIST_HEAD(&vb->hint.ring);
	INIT_LIST_HEAD(&vb->hint.used);
	vdev->priv = vb;
	vb->vdev = vdev;
	mutex_init(&vb->lock);
	init_waitqueue_head(&vb->acked);
	spin_lock_init(&vb->stop_lock);
	INIT_DELAYED_WORK(&vb->size_work, vb_size_work);
	INIT_WORK(&vb->stats_work, vb_stats_work);
	vb->floor_pages = vb_default_floor();
	vb->reserve_mib = READ_ONCE(reserve_mib.val);
	vb->max_pct = READ_ONCE(max_balloon_pct.val);
	vb->inflate = READ_ONCE(inflate);
	vb->backoff_ms = VB_BACKOFF_MIN_MS;
	vb->retry_at = jiffies;
	ratelimit_state_init(&vb->fail_rs, 30 * HZ, 1);
	ratelimit_set_flags(&vb->fail_rs, RATELIMIT_MSG_ON_RELEASE);

	vb->pages = vballoon_pages_create(vb_migrate, vb,
					  !vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
	if (IS_ERR(vb->pages)) {
		err = PTR_ERR(vb->pages);
		goto err_free_vb;
	}
	err = vb_init_vqs(vb);
	if (err)
		goto err_destroy_pages;
	err = vb_hint_init(vb);
	if (err)
		goto err_del_vqs;

	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM)) {
		vb->oom_nb.notifier_call = vb_oom_notify;
		vb->oom_nb.priority = 80;
		err = register_oom_notifier(&vb->oom_nb);
		if (err)
			goto err_hint_exit;
	}
	/*
	 * The balloon cannot wake the guest, but its wakeup source keeps an
	 * adjustment from being cut by autosleep (vb_wake_start()); its own,
	 * as wakeup sources do not nest, so the transport's stays apart.
	 */
	device_set_wakeup_capable(&vdev->dev, true);
	vb_device_ready(vb);

	err = vb_reporting_init(vb);
	if (err)
		goto err_stop;
	vb->reboot_nb.notifier_call = vb_reboot_notify;
	err = register_reboot_notifier(&vb->reboot_nb);
	if (err)
		goto err_reporting_exit;
	err = device_add_group(&vdev->dev, &vb_attr_group);
	if (err)
		goto err_reboot_exit;
	vb->debugfs = debugfs_create_file(dev_name(&vdev->dev), 0400,
					  vb_debugfs_root, vb,
					  &vb_debugfs_fops);

	vb_config_changed(vdev);
	return 0;

err_reboot_exit:
	unregister_reboot_notifier(&vb->reboot_nb);
err_reporting_exit:
	vb_reporting_exit(vb);
err_stop:
	/*
	 * The device is live: an interrupt may have queued work, and that
	 * work may have inflated. Stop it and give every page back.
	 */
	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM))
		unregister_oom_notifier(&vb->oom_nb);
	vb_stop_updates(vb);
	vb_empty_and_reset(vb);
	vb_hint_exit(vb);
	goto err_destroy_pages;
err_hint_exit:
	vb_hint_exit(vb);
err_del_vqs:
	/* The device may hold the stats buffer: reset it first. */
	vballoon_reset_device(vdev);
	vdev->config->del_vqs(vdev);
err_destroy_pages:
	vballoon_pages_destroy(vb->pages);
err_free_vb:
	kfree(vb->bufs);
	kfree(vb);
	return err;
}

static void vb_remove(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;

	unregister_reboot_notifier(&vb->reboot_nb);
	debugfs_remove(vb->debugfs);
	device_remove_group(&vdev->dev, &vb_attr_group);
	vb_quiesce(vb);
	vb_empty_and_reset(vb);
	vb_hint_exit(vb);
	vballoon_pages_destroy(vb->pages);
	kfree(vb->bufs);
	kfree(vb);
}

#ifdef VB_HAVE_DRIVER_SHUTDOWN
/*
 * Where the bus lets a driver stop the device itself at shutdown: quiesce
 * (done already if a reboot notifier ran), then break and reset it as the
 * bus would. The balloon is not emptied; the guest's memory goes with it.
 */
static void vb_shutdown(struct virtio_device *vdev)
{
	vb_quiesce(vdev->priv);
	virtio_device_shutdown(vdev);
}
#endif

#ifdef CONFIG_PM_SLEEP
static int vb_freeze(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;

	/*
	 * The freezable workqueues are frozen, but work may be queued:
	 * cancel it, and let none run on the queues deleted here until a
	 * restore succeeds. Empty the balloon so a restored guest starts
	 * from what the host wants then.
	 */
	vb_stop_updates(vb);
	vb_reporting_exit(vb);
	vb_empty_and_reset(vb);
	return 0;
}

static int vb_restore(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;
	int err;

	err = vb_init_vqs(vb);
	if (err)
		return err;
	vb_device_ready(vb);
	err = vb_reporting_init(vb);
	if (err) {
		vballoon_reset_device(vdev);
		vdev->config->del_vqs(vdev);
		vb->vqs_live = false;
		return err;
	}
	spin_lock_irq(&vb->stop_lock);
	WRITE_ONCE(vb->stop_update, false);
	spin_unlock_irq(&vb->stop_lock);
	/* A stats request that came before this queued no work: look. */
	if (vb->stats_vq)
		queue_work(vb_wq, &vb->stats_work);
	vb_config_changed(vdev);
	return 0;
}
#endif

static const struct virtio_device_id vb_id_table[] = {
	{ VIRTIO_ID_BALLOON, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vb_id_table);

static unsigned int vb_features[] = {
	VIRTIO_BALLOON_F_MUST_TELL_HOST,
	VIRTIO_BALLOON_F_STATS_VQ,
	VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
	VIRTIO_BALLOON_F_FREE_PAGE_HINT,
	VIRTIO_BALLOON_F_PAGE_POISON,
	VIRTIO_BALLOON_F_REPORTING,
};

static struct virtio_driver vb_driver = {
	.feature_table = vb_features,
	.feature_table_size = ARRAY_SIZE(vb_features),
	.driver.name = KBUILD_MODNAME,
	/* v6.1's register_virtio_driver() does not set it for us. */
	.driver.owner = THIS_MODULE,
	.id_table = vb_id_table,
	.validate = vb_validate,
	.probe = vb_probe,
	.remove = vb_remove,
	.config_changed = vb_config_changed,
#ifdef VB_HAVE_DRIVER_SHUTDOWN
	.shutdown = vb_shutdown,
#endif
#ifdef CONFIG_PM_SLEEP
	.freeze = vb_freeze,
	.restore = vb_restore,
#endif
};

static int __init vb_init(void)
{
	int err;

	pr_info("version %s, balloon pages migrate through the %s\n",
		VBALLOON_VERSION, vballoon_pages_scheme());
	vballoon_compat_report();
	vb_wq = alloc_workqueue(KBUILD_MODNAME, WQ_FREEZABLE | WQ_MEM_RECLAIM |
				VBALLOON_WQ_PERCPU, 0);
	if (!vb_wq)
		return -ENOMEM;
	vb_debugfs_root = debugfs_create_dir(KBUILD_MODNAME, NULL);
	err = register_virtio_driver(&vb_driver);
	if (err) {
		debugfs_remove_recursive(vb_debugfs_root);
		destroy_workqueue(vb_wq);
	}
	return err;
}
module_init(vb_init);

static void __exit vb_exit(void)
{
	unregister_virtio_driver(&vb_driver);
	debugfs_remove_recursive(vb_debugfs_root);
	destroy_workqueue(vb_wq);
}
module_exit(vb_exit);

MODULE_DESCRIPTION("Virtio memory balloon driver (vballoon)");
MODULE_LICENSE("GPL");
MODULE_VERSION(VBALLOON_VERSION);
