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
		 "Page frame numbers per inflate/deflate buffer (1-256, default 256; rounded down to whole guest pages)");

static bool huge_first = true;
module_param(huge_first, bool, 0644);
MODULE_PARM_DESC(huge_first,
		 "Inflate with whole 2 MiB blocks while the guest has them free, so a host backed by huge pages frees whole huge pages (default Y)");

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
 * Wait until @done(), which reaps a queue. The ack count is read before
 * @done() looks, so an ack after it ends the sleep; the reaping stays out
 * of the wait's condition.
 */
void vb_wait_acked(struct vballoon *vb, bool (*done)(struct vballoon *))
{
	int seen;

	for (;;) {
		seen = atomic_read(&vb->acks);
		if (done(vb))
			return;
		wait_event(vb->acked, atomic_read(&vb->acks) != seen);
	}
}

static void vb_wait_locked(struct vballoon *vb, bool (*done)(struct vballoon *))
{
	lockdep_assert_held(&vb->lock);
	vb_wait_acked(vb, done);
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

void vb_update_actual(struct vballoon *vb)
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
 * Inflate by up to @units 4 KiB units for at most one pass, with up to
 * max_inflight buffers on the queue at once. A page the host is told of
 * is in vb->pages and counted in num_pages before its buffer goes out;
 * the stash (the rest of a split huge block) is never in the balloon and
 * is empty when the pass ends; vb->lock is held only from taking a buffer
 * to sending it.
 * Return: units added to the balloon.
 */
unsigned int vb_inflate(struct vballoon *vb, unsigned int units)
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
