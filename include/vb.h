/* SPDX-License-Identifier: GPL-2.0 */
/*
 * vballoon's own structures and the functions its files share. The files
 * by concern: virtio_balloon.c the device (probe, remove, queues, power
 * management), vb_pages.c inflate and deflate, vb_policy.c how big the
 * balloon may be and the size work, vb_stats.c the statistics queue,
 * vb_free_pages.c hinting and reporting, vb_sysfs.c sysfs and debugfs.
 */
#ifndef VB_H
#define VB_H

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

/* 4 KiB balloon units per guest page. */
#define VB_UNITS_PER_PAGE	(PAGE_SIZE >> VIRTIO_BALLOON_PFN_SHIFT)

/*
 * Frame numbers per inflate/deflate buffer: a whole 2 MiB block, so that
 * a host backed by 2 MiB pages gets all of one in one buffer (QEMU frees
 * a host huge page only then). Some hosts cap a descriptor at 256 entries
 * (cloud-hypervisor, Firecracker): a buffer is a chain of such descriptors.
 */
#define VB_PFNS_PER_BUF		(SZ_2M >> VIRTIO_BALLOON_PFN_SHIFT)
#define VB_PFNS_PER_DESC	256
#define VB_DESCS_PER_BUF	(VB_PFNS_PER_BUF / VB_PFNS_PER_DESC)

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
 * After an OOM notification the guest is under pressure this long, renewed
 * while it keeps eating into what it got; meanwhile it is checked this often.
 */
#define VB_PRESSURE_MS		1000
#define VB_PRESSURE_POLL_MS	100

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

/* Free page hints go out in blocks of the largest buddy order. */
#define VB_HINT_ORDER		VBALLOON_MAX_ORDER
#define VB_HINT_GFP		(__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC)

/* One inflate or deflate request to the host. */
struct vb_buf {
	/*
	 * Until the host acks the buffer: inflated pages, which join the
	 * balloon only then, or deflated pages waiting for MUST_TELL_HOST.
	 */
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
	 * Guards @vq (NULL while the queues are gone) and the blocks hinted
	 * this round, oldest first: the guest holds them until the host is
	 * DONE, or until the shrinker gives them back.
	 */
	spinlock_t lock;
	struct list_head blocks;
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
	VB_CNT_PRESSURE_DEFLATED_PAGES,
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

/*
 * Locks, outer first (lockdep checks the order on the debug kernel):
 *
 *   oom_lock (the OOM notifier's caller)
 *     vb->lock (mutex)          inflate and deflate queues and buffers,
 *                               `actual`; nothing allocates under it
 *       page lock               balloon_compaction.c, joining the balloon
 *         vballoon_pages.lock   the balloon's page list (irqsave)
 *   stop_lock (irqsave)         taken in interrupts
 *     wake_lock (irqsave)
 *   hint.lock, high_lock        leaves: only queue and list operations
 *
 * Page migration calls vb_migrate() with two page locks held, so it only
 * tries vb->lock. The reporting core calls vb_report() with its own mutex
 * held; it takes none of these. Nothing sleeps under a spinlock.
 */
struct vballoon {
	struct virtio_device *vdev;
	struct virtqueue *inflate_vq, *deflate_vq, *stats_vq, *reporting_vq;

	/* Serialises inflate, deflate and migration, and guards @bufs. */
	struct mutex lock;
	/* Balloon size in 4 KiB units: pages the host has acked, `actual`. */
	unsigned int num_pages;
	struct vballoon_pages *pages;

	/* Woken by every ack interrupt and by what ends a hint round's wait. */
	wait_queue_head_t acked;
	/* Bumped by inflate/deflate acks: a waiter that saw it change looks. */
	atomic_t acks;
	/* The same for the reporting queue. */
	atomic_t report_acks;
	/* The OOM notifier wants the lock: an inflate pass stops. */
	atomic_t oom_waiting;
	/* The host acked the one-page buffer of a migration. */
	bool mig_acked;
	struct vb_buf *bufs;
	unsigned long free_bufs;	/* bitmap of @bufs not in flight */
	unsigned int max_inflight;
	unsigned int inflight;
	/* Frame numbers a buffer may carry: whole descriptors the ring holds. */
	unsigned int buf_pfns;
	/*
	 * Test only (debugfs host_delay_ms): notify the host this late, as a
	 * host that handles its queues in another thread may see a buffer.
	 */
	unsigned int host_delay_ms;
	unsigned long delayed_vqs;	/* bit VB_VQ_*: a notification waits */
	struct delayed_work notify_work;
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

	/* The size and stats works' queue (the hint round has its own). */
	struct workqueue_struct *wq;
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
	/* Under pressure until then (jiffies): vb_pressure(). */
	bool pressure;
	unsigned long pressure_until;
	/* Pages pressure may still give back before then (size work only). */
	unsigned long pressure_left;
	unsigned long pressure_window;
	/* The last target refused, counted once. */
	bool refused;
	unsigned int refused_target;
	struct ratelimit_state fail_rs;

	/* For debugfs: the last target change and the stats last sent. */
	unsigned int last_target, prev_target;
	u64 last_target_ms;
	unsigned int nr_stats;
	struct dentry *debugfs, *debugfs_delay;
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

static inline bool vb_has(struct vballoon *vb, unsigned int fbit)
{
	return virtio_has_feature(vb->vdev, fbit);
}

static inline u64 vb_now_ms(void)
{
	return ktime_to_ms(ktime_get_boottime());
}

#define VB_WAKE_ADJUST	BIT(0)
#define VB_WAKE_STATS	BIT(1)

/* virtio_balloon.c */
extern const struct kernel_param_ops vb_uint_param_ops;
extern struct vb_uint_param max_balloon_pct;
unsigned int vb_ram_mib(unsigned long balloon_pages);

/* vb_pages.c */
void vb_ack(struct virtqueue *vq);
void vb_notify_work(struct work_struct *work);
void vb_flush_notify(struct vballoon *vb);
unsigned long vb_release_high(struct vballoon *vb);
void vb_update_actual(struct vballoon *vb);
unsigned int vb_inflate(struct vballoon *vb, unsigned int units);
unsigned int vb_deflate(struct vballoon *vb, unsigned int units);
int vb_oom_notify(struct notifier_block *nb, unsigned long unused,
		  void *parm);
int vb_migrate(void *priv, struct page *newpage, struct page *page);

/* vb_policy.c */
unsigned long vb_held_pages(struct vballoon *vb);
unsigned long vb_floor(struct vballoon *vb);
unsigned long vb_slack(unsigned long floor);
unsigned long vb_boost_pages(void);
unsigned long vb_room(struct vballoon *vb);
void vb_pressure(struct vballoon *vb);
unsigned int vb_ceiling(struct vballoon *vb);
unsigned long vb_pcp_first(struct vballoon *vb, unsigned long over);
unsigned int vb_target(struct vballoon *vb);
void vb_wake_start(struct vballoon *vb, unsigned int what);
void vb_wake_take(struct vballoon *vb, unsigned int what);
void vb_wake_done(struct vballoon *vb, unsigned int what);
void vb_kick(struct vballoon *vb);
void vb_size_work(struct work_struct *work);
unsigned long vb_default_floor(void);

/* vb_stats.c */
int vb_post_stats(struct vballoon *vb, bool kick);
void vb_stats_work(struct work_struct *work);
void vb_stats_request(struct virtqueue *vq);

/* vb_free_pages.c */
unsigned long vb_hint_release(struct vballoon *vb, unsigned long n);
void vb_hint_kick(struct vballoon *vb);
int vb_hint_init(struct vballoon *vb);
void vb_hint_exit(struct vballoon *vb);
void vb_report_ack(struct virtqueue *vq);
int vb_reporting_init(struct vballoon *vb);
void vb_reporting_exit(struct vballoon *vb);

/* vb_sysfs.c */
extern const struct attribute_group *vb_attr_groups[];
extern struct dentry *vb_debugfs_root;
void vb_debugfs_add(struct vballoon *vb);

#endif /* VB_H */
