// SPDX-License-Identifier: GPL-2.0
/*
 * Inflate and deflate: pages to and from the host on the inflate and
 * deflate queues, the buffers in flight, deflate on OOM, and telling the
 * host when compaction moves a balloon page.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "vb.h"
#include "vballoon_trace.h"

static struct vb_uint_param oom_pages = { .val = 256, .min = 1, .max = 65536 };
module_param_cb(oom_pages, &vb_uint_param_ops, &oom_pages, 0644);
MODULE_PARM_DESC(oom_pages,
		 "4 KiB units given back per OOM notification when the host offers DEFLATE_ON_OOM, rounded up to whole guest pages (1-65536, default 256: 1 MiB, as the in-tree driver)");

static struct vb_uint_param batch = {
	.val = VB_PFNS_PER_BUF, .min = 1, .max = VB_PFNS_PER_BUF,
};
module_param_cb(batch, &vb_uint_param_ops, &batch, 0644);
MODULE_PARM_DESC(batch,
		 "Page frame numbers per inflate/deflate buffer (1-512, default 512: a 2 MiB block, sent as a chain of 256-entry descriptors; 256 or less for a host that reads only a chain's first descriptor); rounded down to whole guest pages");

static bool huge_first = true;
module_param(huge_first, bool, 0644);
MODULE_PARM_DESC(huge_first,
		 "Inflate with whole 2 MiB blocks, one to a buffer, while the guest has them free, so a host backed by 2 MiB pages frees whole huge pages (default Y; needs batch=512)");

void vb_ack(struct virtqueue *vq)
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
unsigned long vb_release_high(struct vballoon *vb)
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
 * The host has acked these inflated pages: only now do they join the
 * balloon, where deflate, the OOM notifier and migration can reach them.
 * Handing a page back before the host processed its inflate request would
 * let the host discard it after the guest reused it.
 */
static void vb_balloon_add(struct vballoon *vb, struct list_head *list,
			   unsigned int n)
{
	vballoon_pages_enqueue(vb->pages, list);
	WRITE_ONCE(vb->num_pages, vb->num_pages + n * VB_UNITS_PER_PAGE);
	atomic64_add(n, &vb->cnt[VB_CNT_INFLATED_PAGES]);
}

/*
 * Take back every buffer the host is done with on @vq: inflated pages go
 * into the balloon, deflated pages that waited for MUST_TELL_HOST to the
 * guest, a migration's one-page buffer sets mig_acked. Lock held.
 */
static void vb_reap_vq(struct vballoon *vb, struct virtqueue *vq)
{
	unsigned int len;
	struct vb_buf *buf;
	void *token;

	lockdep_assert_held(&vb->lock);
	while ((token = virtqueue_get_buf(vq, &len))) {
		if (token == vb->mig_pfns) {
			vb->mig_acked = true;
			continue;
		}
		buf = token;
		if (vq == vb->inflate_vq)
			vb_balloon_add(vb, &buf->pages,
				       buf->n / VB_UNITS_PER_PAGE);
		else
			vb_release_pages(vb, &buf->pages);
		__set_bit(buf - vb->bufs, &vb->free_bufs);
		WRITE_ONCE(vb->inflight, vb->inflight - 1);
	}
}

/* Both queues: their buffers are one pool. */
static void vb_reap(struct vballoon *vb)
{
	vb_reap_vq(vb, vb->inflate_vq);
	vb_reap_vq(vb, vb->deflate_vq);
}

/* The conditions waited for; they only read, vb_reap() updates. */
static bool vb_has_room(struct vballoon *vb)
{
	return vb->inflight < vb->max_inflight;
}

static bool vb_is_idle(struct vballoon *vb)
{
	return !vb->inflight;
}

static bool vb_mig_done(struct vballoon *vb)
{
	return vb->mig_acked;
}

/*
 * Reap until @done() holds, sleeping between acks. The ack count is read
 * before reaping, so an ack that comes after the reap ends the sleep. With
 * @keep_lock the lock stays held throughout (deflate, migration); without
 * it, it is taken to reap and dropped to sleep, so the OOM notifier and
 * migration get it while the host works on an inflate. Returns locked.
 */
static void vb_wait(struct vballoon *vb, bool (*done)(struct vballoon *),
		    bool keep_lock)
{
	int seen;

	if (keep_lock)
		lockdep_assert_held(&vb->lock);
	for (;;) {
		seen = atomic_read(&vb->acks);
		if (!keep_lock)
			mutex_lock(&vb->lock);
		vb_reap(vb);
		if (done(vb))
			return;
		if (!keep_lock)
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

/*
 * Notify the host of new buffers on @vq. With debugfs host_delay_ms set,
 * a test makes the host see them late, as one whose queues another thread
 * serves would: virtqueue_notify() needs no lock, so a work can send it.
 */
static void vb_notify(struct vballoon *vb, struct virtqueue *vq,
		      unsigned int vq_bit)
{
	unsigned int delay = READ_ONCE(vb->host_delay_ms);

	if (likely(!delay)) {
		virtqueue_kick(vq);
		return;
	}
	if (virtqueue_kick_prepare(vq)) {
		set_bit(vq_bit, &vb->delayed_vqs);
		queue_delayed_work(system_wq, &vb->notify_work,
				   msecs_to_jiffies(delay));
	}
}

void vb_notify_work(struct work_struct *work)
{
	struct vballoon *vb = container_of(to_delayed_work(work),
					   struct vballoon, notify_work);

	if (test_and_clear_bit(VB_VQ_INFLATE, &vb->delayed_vqs))
		virtqueue_notify(vb->inflate_vq);
	if (test_and_clear_bit(VB_VQ_DEFLATE, &vb->delayed_vqs))
		virtqueue_notify(vb->deflate_vq);
}

/* Before the queues go: every delayed notification is sent. */
void vb_flush_notify(struct vballoon *vb)
{
	WRITE_ONCE(vb->host_delay_ms, 0);
	flush_delayed_work(&vb->notify_work);
}

/*
 * Add @buf to @vq as one chain of descriptors of at most VB_PFNS_PER_DESC
 * frame numbers each, and notify the host. Lock held.
 */
static void vb_send(struct vballoon *vb, struct virtqueue *vq,
		    struct vb_buf *buf)
{
	struct scatterlist sg[VB_DESCS_PER_BUF];
	unsigned int i, nsg = DIV_ROUND_UP(buf->n, VB_PFNS_PER_DESC);

	sg_init_table(sg, nsg);
	for (i = 0; i < nsg; i++)
		sg_set_buf(&sg[i], &buf->pfns[i * VB_PFNS_PER_DESC],
			   sizeof(buf->pfns[0]) *
			   min_t(unsigned int, buf->n - i * VB_PFNS_PER_DESC,
				 VB_PFNS_PER_DESC));
	/* max_inflight and buf_pfns keep within the ring: there is room. */
	if (WARN_ON_ONCE(virtqueue_add_outbuf(vq, sg, nsg, buf, GFP_KERNEL))) {
		vb_release_pages(vb, &buf->pages);
		vb_unget_buf(vb, buf);
		return;
	}
	WRITE_ONCE(vb->inflight, vb->inflight + 1);
	vb_notify(vb, vq, vq == vb->inflate_vq ? VB_VQ_INFLATE : VB_VQ_DEFLATE);
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

	/* max_inflight leaves a descriptor free, but not on a tiny ring. */
	if (!vq->num_free)
		vb_wait(vb, vb_is_idle, true);
	vb_put_pfns(vb, vb->mig_pfns, &n, page);
	sg_init_one(&sg, vb->mig_pfns, sizeof(vb->mig_pfns));
	vb->mig_acked = false;
	if (WARN_ON_ONCE(virtqueue_add_outbuf(vq, &sg, 1, vb->mig_pfns,
					      GFP_KERNEL)))
		return;
	virtqueue_kick(vq);
	vb_wait(vb, vb_mig_done, true);
}

void vb_update_actual(struct vballoon *vb)
{
	u32 actual = vb->num_pages;

	lockdep_assert_held(&vb->lock);
	/* Balloon config space is little-endian even on legacy devices. */
	virtio_cwrite_le(vb->vdev, struct virtio_balloon_config, actual,
			 &actual);
}

/* Pages per buffer: the batch parameter within what the ring allows. */
static unsigned int vb_batch_pages(struct vballoon *vb)
{
	return max_t(unsigned int, min(READ_ONCE(batch.val), vb->buf_pfns) /
		     VB_UNITS_PER_PAGE, 1);
}

/*
 * Balloon pages are movable only where the kernel can migrate them
 * (VBALLOON_GFP_MOVABLE); elsewhere they would pin ZONE_MOVABLE and CMA.
 */
#define VB_GFP		(GFP_HIGHUSER | VBALLOON_GFP_MOVABLE | \
			 __GFP_NOMEMALLOC | __GFP_NORETRY | __GFP_NOWARN)
/* Only blocks already free: no reclaim, no compaction for a huge block. */
#define VB_HUGE_GFP	(VB_GFP & ~__GFP_RECLAIM)

/*
 * Allocate one batch of up to @want pages onto @list. A batch the size of
 * a 2 MiB block takes a whole free block if the guest has one (huge_first)
 * and nothing is to come from the per-CPU lists: the host gets the block
 * in one buffer. Otherwise up to @stock pages from this CPU's per-CPU
 * lists (vb_pcp_first()), then single pages in bulk.
 * Return: pages allocated; *@order is the order they were allocated at.
 */
static unsigned int vb_alloc_batch(struct vballoon *vb, struct list_head *list,
				   unsigned int want, unsigned long stock,
				   unsigned int *order)
{
	unsigned int n = 0, i;
	struct page *page;

	*order = 0;
	if (want == VB_HUGE_PAGES && !stock && READ_ONCE(huge_first)) {
		page = alloc_pages(VB_HUGE_GFP, VB_HUGE_ORDER);
		if (page) {
			split_page(page, VB_HUGE_ORDER);
			for (i = 0; i < VB_HUGE_PAGES; i++)
				list_add_tail(&page[i].lru, list);
			*order = VB_HUGE_ORDER;
			return VB_HUGE_PAGES;
		}
	}
	if (stock) {
		n = vballoon_alloc_bulk(VB_GFP, min_t(unsigned long, want, stock),
					list);
		WRITE_ONCE(vb->pcp_taken, vb->pcp_taken + n);
		atomic64_add(n, &vb->cnt[VB_CNT_PCP_PAGES]);
	}
	return n + vballoon_alloc_bulk(VB_GFP, want - n, list);
}

/* Put the pages of @list in a buffer and send it; takes the lock. */
static void vb_send_inflate(struct vballoon *vb, struct list_head *list)
{
	struct vb_buf *buf;
	struct page *page;

	vb_wait(vb, vb_has_room, false);
	buf = vb_take_buf(vb);
	list_for_each_entry(page, list, lru)
		vb_put_pfns(vb, buf->pfns, &buf->n, page);
	list_splice_init(list, &buf->pages);
	vb_send(vb, vb->inflate_vq, buf);
	mutex_unlock(&vb->lock);
}

/*
 * Inflate by up to @units 4 KiB units for at most one pass: a batch at a
 * time, each checked against the floor first, with up to max_inflight
 * buffers on the queue. vb->lock is held only to queue a batch, so that
 * allocation (reclaim) and the host's work happen without it; a pass ends
 * early when the OOM notifier waits for the lock. Pages join the balloon
 * as the host acks them (vb_reap_vq()), all of them before this returns.
 * Return: units added to the balloon.
 */
unsigned int vb_inflate(struct vballoon *vb, unsigned int units)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(VB_PASS_MS);
	unsigned int per_buf = vb_batch_pages(vb);
	unsigned int pages = units / VB_UNITS_PER_PAGE;
	unsigned int sent = 0, want, got, n, order;
	unsigned long room, stock;
	u64 t0 = 0;
	LIST_HEAD(list);

	while (sent < pages && time_before(jiffies, deadline) &&
	       !atomic_read(&vb->oom_waiting)) {
		want = min(pages - sent, per_buf);
		room = vb_room(vb);
		if (room < want)
			break;
		stock = pages - sent > room ?
			vb_pcp_first(vb, pages - sent - room) : 0;
		if (trace_vballoon_inflate_enabled())
			t0 = ktime_get_ns();
		got = vb_alloc_batch(vb, &list, want, stock, &order);
		if (got < want) {
			atomic64_inc(&vb->cnt[VB_CNT_ALLOC_FAILURES]);
			atomic64_set(&vb->cnt[VB_CNT_LAST_ALLOC_FAILURE_MS],
				     vb_now_ms());
		}
		/*
		 * Pages the host cannot be told of are held aside, counted
		 * against the floor, so the next batch comes from below.
		 */
		n = got - vb_hold_high(vb, &list);
		if (n) {
			vb_send_inflate(vb, &list);
			sent += n;
			trace_vballoon_inflate(n, order,
					       t0 ? ktime_get_ns() - t0 : 0);
		}
		if (got < want)
			break;
	}
	vb_wait(vb, vb_is_idle, false);
	vb_update_actual(vb);
	mutex_unlock(&vb->lock);
	return sent * VB_UNITS_PER_PAGE;
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
	unsigned int per_buf = vb_batch_pages(vb);
	unsigned int pages, done = 0, n;
	struct vb_buf *buf;
	struct page *page;
	u64 t0 = 0;

	/* Only pages the host has acked are in the balloon to take. */
	vb_reap(vb);
	pages = min(units, vb->num_pages) / VB_UNITS_PER_PAGE;
	while (done < pages && time_before(jiffies, deadline)) {
		if (trace_vballoon_deflate_enabled())
			t0 = ktime_get_ns();
		vb_wait(vb, vb_has_room, true);
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
	vb_wait(vb, vb_is_idle, true);
	if (done)
		vb_update_actual(vb);
	return done * VB_UNITS_PER_PAGE;
}

unsigned int vb_deflate(struct vballoon *vb, unsigned int units)
{
	unsigned int n;

	mutex_lock(&vb->lock);
	n = vb_deflate_locked(vb, units);
	mutex_unlock(&vb->lock);
	return n;
}

int vb_oom_notify(struct notifier_block *nb, unsigned long unused,
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
	if (done)
		vb_pressure(vb);
	return NOTIFY_OK;
}

int vb_migrate(void *priv, struct page *newpage, struct page *page)
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
