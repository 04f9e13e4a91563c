// SPDX-License-Identifier: GPL-2.0
/*
 * Free pages the host may skip or discard: free page hinting (live
 * migration) and free page reporting.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "vb.h"
#include "vballoon_trace.h"

static struct vb_uint_param report_order = {
	.val = 0, .min = 0, .max = VBALLOON_MAX_ORDER,
};
module_param_cb(report_order, &vb_uint_param_ops, &report_order, 0444);
MODULE_PARM_DESC(report_order,
		 "Smallest free block (buddy order of guest pages) reported to the host with free page reporting; 0: 2 MiB blocks, or the pageblock order if smaller");

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

/*
 * Take back what the host used: blocks carry no token of their own (a
 * block may be back in the guest's hands before the host is done with
 * it). Return: true if a block fits beside the stop id.
 */
static bool vb_hint_reap_locked(struct vb_hint *h)
{
	unsigned int len;

	lockdep_assert_held(&h->lock);
	while (virtqueue_get_buf(h->vq, &len))
		;
	return h->vq->num_free > 1;
}

/*
 * Give up to @n hinted blocks back to the guest, oldest first (those the
 * host has most likely used). The host only reads a hint, to skip a page
 * it finds unchanged in its dirty log; a block written after the guest
 * took it back is dirty again and migrates as any page: the guest may
 * take back any block, whether the host has used it or not.
 * Return: how many.
 */
unsigned long vb_hint_release(struct vballoon *vb, unsigned long n)
{
	struct vb_hint *h = &vb->hint;
	struct page *page, *tmp;
	unsigned long done = 0;
	LIST_HEAD(list);

	spin_lock(&h->lock);
	if (h->vq)
		vb_hint_reap_locked(h);
	while (done < n && !list_empty(&h->blocks)) {
		list_move_tail(h->blocks.next, &list);
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
	freed = vb_hint_release(vb, blocks);
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
		err = virtqueue_add_inbuf(h->vq, &sg, 1, h, GFP_ATOMIC);
		if (!err) {
			virtqueue_kick(h->vq);
			list_add_tail(&page->lru, &h->blocks);
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
	int err, stop_err;

	if (id == VIRTIO_BALLOON_CMD_ID_DONE) {
		/* The host has let go of every block, used or not. */
		vb_hint_release(vb, ULONG_MAX);
		return;
	}
	if (id == VIRTIO_BALLOON_CMD_ID_STOP ||
	    id == virtio32_to_cpu(vb->vdev, h->active))
		return;

	h->active = cpu_to_virtio32(vb->vdev, id);
	clear_bit(0, &h->squeezed);
	atomic64_inc(&vb->cnt[VB_CNT_HINT_ROUNDS]);
	err = vb_hint_send_id(vb, &h->active);
	if (!err) {
		/* A round that began ends with the stop id, whatever befell it. */
		err = vb_hint_send_blocks(vb, id, &blocks);
		stop_err = vb_hint_send_id(vb, &h->stop);
		err = err ?: stop_err;
	}
	atomic64_add(blocks << VB_HINT_ORDER, &vb->cnt[VB_CNT_HINTED_PAGES]);
	trace_vballoon_hint_round(id, blocks << VB_HINT_ORDER, VB_HINT_ORDER,
				  ktime_get_ns() - t0);
	if (err)
		dev_err_ratelimited(&vb->vdev->dev,
				    "free page hint round %u failed: %d\n",
				    id, err);
}

void vb_hint_kick(struct vballoon *vb)
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
	case PM_RESTORE_PREPARE:
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

int vb_hint_init(struct vballoon *vb)
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

void vb_hint_exit(struct vballoon *vb)
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
void vb_report_ack(struct virtqueue *vq)
{
	struct vballoon *vb = vq->vdev->priv;

	atomic_inc(&vb->report_acks);
	wake_up(&vb->acked);
}

static int vb_report(struct page_reporting_dev_info *pr,
		     struct scatterlist *sg, unsigned int nents)
{
	struct vballoon *vb = container_of(pr, struct vballoon, reporting);
	struct virtqueue *vq = vb->reporting_vq;
	struct scatterlist *s;
	unsigned int i, len;
	u64 bytes = 0;
	int err, seen;

	/* The queue holds a whole report: checked at probe. */
	err = virtqueue_add_inbuf(vq, sg, nents, vb, GFP_NOWAIT | __GFP_NOWARN);
	if (WARN_ON_ONCE(err))
		return err;
	virtqueue_kick(vq);
	/*
	 * The pages are the host's until it gives the buffer back, however
	 * long that takes; vb_quiesce() ends reporting before any reset. The
	 * ack count is read before looking, so a later ack ends the sleep.
	 */
	for (;;) {
		seen = atomic_read(&vb->report_acks);
		if (virtqueue_get_buf(vq, &len))
			break;
		wait_event(vb->acked, atomic_read(&vb->report_acks) != seen);
	}
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

int vb_reporting_init(struct vballoon *vb)
{
	unsigned int size, asked, order;
	int err;

	if (!vb_has(vb, VIRTIO_BALLOON_F_REPORTING))
		return 0;
	/* A queue too small to take a report leaves the rest working. */
	size = virtqueue_get_vring_size(vb->reporting_vq);
	if (!vballoon_reporting_capacity(&vb->reporting, size)) {
		dev_warn(&vb->vdev->dev,
			 "reporting queue holds %u entries, this kernel's reports need %u: not reporting\n",
			 size, PAGE_REPORTING_CAPACITY);
		return 0;
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

void vb_reporting_exit(struct vballoon *vb)
{
	if (vb->reporting_on)
		page_reporting_unregister(&vb->reporting);
	vb->reporting_on = false;
}
