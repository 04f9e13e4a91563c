// SPDX-License-Identifier: GPL-2.0
/*
 * vballoon: the balloon's page book-keeping and page migration.
 *
 * Pages in the balloon are kept on a per-device list, marked PageOffline
 * (so dump tools skip them) and movable, so that compaction can ask to move
 * them. This file never talks to the device: when a page is to move, the
 * driver's migrate callback tells the host.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/gfp.h>
#include <linux/log2.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/vmstat.h>

#include "vballoon.h"

static const struct movable_operations vballoon_mops;

/**
 * vballoon_pages_init() - set up an empty balloon
 * @vp: the book-keeping to initialise
 * @migrate: called to tell the host when compaction moves a balloon page
 */
void vballoon_pages_init(struct vballoon_pages *vp,
			 vballoon_migrate_fn migrate)
{
	spin_lock_init(&vp->lock);
	INIT_LIST_HEAD(&vp->pages);
	vp->isolated = 0;
	vp->migrate = migrate;
}

/**
 * vballoon_page_alloc() - allocate one page to inflate the balloon with
 *
 * The allocation neither dips into emergency reserves nor retries hard nor
 * invokes the OOM killer: the balloon only takes what the guest can spare.
 * Movable, so that compaction may later move it.
 *
 * Return: the page, or NULL when the guest has none to spare.
 */
struct page *vballoon_page_alloc(void)
{
	return alloc_page(GFP_HIGHUSER_MOVABLE | __GFP_NOMEMALLOC |
			  __GFP_NORETRY | __GFP_NOWARN);
}

/**
 * vballoon_page_free() - give a page that left the balloon back to the guest
 * @page: a page returned by vballoon_pages_dequeue() or never enqueued
 */
void vballoon_page_free(struct page *page)
{
	__free_page(page);
}

/* Caller holds vp->lock and the page lock. */
static void vballoon_page_insert(struct vballoon_pages *vp, struct page *page)
{
	__SetPageOffline(page);
	__SetPageMovable(page, &vballoon_mops);
	set_page_private(page, (unsigned long)vp);
	list_add(&page->lru, &vp->pages);
}

/* Undo vballoon_page_insert() once the page is off the list; page locked. */
static void vballoon_page_finalize(struct page *page)
{
	__ClearPageMovable(page);
	set_page_private(page, 0);
	__ClearPageOffline(page);
}

/**
 * vballoon_pages_enqueue() - put freshly allocated pages in the balloon
 * @vp: the balloon
 * @list: pages from vballoon_page_alloc(), linked through page->lru; empty
 *        on return
 *
 * Context: may sleep.
 * Return: the number of pages moved into the balloon.
 */
unsigned int vballoon_pages_enqueue(struct vballoon_pages *vp,
				    struct list_head *list)
{
	struct page *page, *tmp;
	unsigned long flags;
	unsigned int n = 0;

	/*
	 * Nobody else should hold these pages, but a pfn walker may have
	 * locked one for a moment: wait for it rather than fail the page.
	 * Locked, the page cannot be isolated before it is on our list.
	 */
	list_for_each_entry(page, list, lru)
		lock_page(page);

	spin_lock_irqsave(&vp->lock, flags);
	list_for_each_entry_safe(page, tmp, list, lru) {
		list_del(&page->lru);
		vballoon_page_insert(vp, page);
		unlock_page(page);
		n++;
	}
	spin_unlock_irqrestore(&vp->lock, flags);
	count_vm_events(BALLOON_INFLATE, n);
	return n;
}

/**
 * vballoon_pages_dequeue() - take pages out of the balloon
 * @vp: the balloon
 * @list: where the pages go, linked through page->lru
 * @n: how many pages to take at most
 *
 * Pages isolated for migration, or locked by someone about to isolate them,
 * are skipped: they come back later. The pages taken are ordinary pages
 * again, ready for vballoon_page_free() once the host has been told.
 *
 * Return: the number of pages taken.
 */
unsigned int vballoon_pages_dequeue(struct vballoon_pages *vp,
				    struct list_head *list, unsigned int n)
{
	struct page *page, *tmp;
	unsigned long flags;
	unsigned int taken = 0;

	spin_lock_irqsave(&vp->lock, flags);
	list_for_each_entry_safe(page, tmp, &vp->pages, lru) {
		if (taken == n)
			break;
		if (!trylock_page(page))
			continue;
		list_move(&page->lru, list);
		vballoon_page_finalize(page);
		unlock_page(page);
		taken++;
	}
	spin_unlock_irqrestore(&vp->lock, flags);
	count_vm_events(BALLOON_DEFLATE, taken);
	return taken;
}

/**
 * vballoon_pages_isolated() - how many balloon pages migration holds now
 * @vp: the balloon
 *
 * Return: the number of isolated pages; they are still in the balloon.
 */
unsigned long vballoon_pages_isolated(struct vballoon_pages *vp)
{
	unsigned long flags, n;

	spin_lock_irqsave(&vp->lock, flags);
	n = vp->isolated;
	spin_unlock_irqrestore(&vp->lock, flags);
	return n;
}

/* Add a run of @len consecutive frames to the census by its order. */
static void vballoon_census_run(unsigned long *by_order, unsigned long len)
{
	if (len)
		by_order[min_t(unsigned int, ilog2(len), VBALLOON_MAX_ORDER)] +=
			len;
}

/**
 * vballoon_pages_census() - count the balloon's pages by zone and by run
 * @vp: the balloon
 * @by_zone: pages per zone index (MAX_NR_ZONES entries), added to
 * @by_order: pages per order of the run of consecutive page frames they
 *            were found in (VBALLOON_MAX_ORDER + 1 entries), added to;
 *            whole 2 MiB blocks from huge-page-first inflation show up at
 *            their order
 *
 * Walks the whole list with the lock held: for debugging, not hot paths.
 * Isolated pages are not on the list and not counted.
 */
void vballoon_pages_census(struct vballoon_pages *vp, unsigned long *by_zone,
			   unsigned long *by_order)
{
	unsigned long flags, pfn, prev = 0, run = 0;
	struct page *page;

	spin_lock_irqsave(&vp->lock, flags);
	list_for_each_entry(page, &vp->pages, lru) {
		pfn = page_to_pfn(page);
		by_zone[page_zonenum(page)]++;
		if (run && (pfn == prev + 1 || pfn + 1 == prev)) {
			run++;
		} else {
			vballoon_census_run(by_order, run);
			run = 1;
		}
		prev = pfn;
	}
	spin_unlock_irqrestore(&vp->lock, flags);
	vballoon_census_run(by_order, run);
}

/**
 * vballoon_pages_replace() - put a migration target in the balloon
 * @vp: the balloon
 * @newpage: the locked page that takes the place of an isolated one
 *
 * The balloon takes its own reference on @newpage; the isolated page it
 * replaces leaves the isolated count.
 */
void vballoon_pages_replace(struct vballoon_pages *vp, struct page *newpage)
{
	unsigned long flags;

	get_page(newpage);
	spin_lock_irqsave(&vp->lock, flags);
	vballoon_page_insert(vp, newpage);
	vp->isolated--;
	spin_unlock_irqrestore(&vp->lock, flags);
	count_vm_event(BALLOON_MIGRATE);
}

/**
 * vballoon_page_retire() - let go of a balloon page that migration replaced
 * @page: the isolated, locked page; migration frees it once we drop our
 *        reference
 */
void vballoon_page_retire(struct page *page)
{
	vballoon_page_finalize(page);
	put_page(page);
}

static bool vballoon_page_isolate(struct page *page, isolate_mode_t mode)
{
	struct vballoon_pages *vp = (struct vballoon_pages *)page_private(page);
	unsigned long flags;

	spin_lock_irqsave(&vp->lock, flags);
	list_del(&page->lru);
	vp->isolated++;
	spin_unlock_irqrestore(&vp->lock, flags);
	return true;
}

static void vballoon_page_putback(struct page *page)
{
	struct vballoon_pages *vp = (struct vballoon_pages *)page_private(page);
	unsigned long flags;

	spin_lock_irqsave(&vp->lock, flags);
	list_add(&page->lru, &vp->pages);
	vp->isolated--;
	spin_unlock_irqrestore(&vp->lock, flags);
}

static int vballoon_page_migrate(struct page *newpage, struct page *page,
				 enum migrate_mode mode)
{
	struct vballoon_pages *vp = (struct vballoon_pages *)page_private(page);

	return vp->migrate(vp, newpage, page);
}

static const struct movable_operations vballoon_mops = {
	.isolate_page = vballoon_page_isolate,
	.migrate_page = vballoon_page_migrate,
	.putback_page = vballoon_page_putback,
};
