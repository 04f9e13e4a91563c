// SPDX-License-Identifier: GPL-2.0
/*
 * vballoon: the balloon's page book-keeping and page migration.
 *
 * Pages in the balloon are marked PageOffline (dump tools skip them) and
 * movable, so that compaction can ask to move them; this file never talks
 * to the device: when a page is to move, the driver's callback tells the
 * host. Kernels differ in how a module's pages become movable, in three
 * schemes (include/compat.h picks one):
 *
 * - the kernel's balloon core (struct balloon_dev_info): the only way once
 *   the migration core picks the operations by page type;
 * - the module's own struct movable_operations and __SetPageMovable();
 * - before movable_operations: address_space_operations on an inode of the
 *   module's own pseudo file system.
 *
 * The last two share everything but how a page is tied to its operations.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/gfp.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/slab.h>
#include <linux/vmstat.h>

#include "vballoon.h"

/**
 * struct vballoon_pages - the pages one balloon device holds
 * @b: the kernel balloon core's book-keeping (its own lock and list)
 * @lock: guards @pages and @isolated; taken from any context
 * @pages: pages in the balloon that are not isolated for migration
 * @isolated: balloon pages currently isolated by page migration
 * @mnt: the pseudo file system @inode lives on
 * @inode: whose mapping carries the migration operations
 * @migrate: the driver's callback that tells the host
 * @priv: the driver's argument to @migrate
 * @adjust_managed: pages leave the guest's managed count while ballooned
 * @by_zone: balloon pages per zone, isolated ones included
 */
struct vballoon_pages {
#ifdef VB_KERNEL_BALLOON
	struct balloon_dev_info b;
#else
	spinlock_t lock;		/* guards @pages and @isolated */
	struct list_head pages;
	unsigned long isolated;
#ifndef VB_HAVE_MOVABLE_OPS
	struct vfsmount *mnt;
	struct inode *inode;
#endif
#endif
	vballoon_migrate_fn migrate;
	void *priv;
	bool adjust_managed;
	atomic_long_t by_zone[MAX_NR_ZONES];
};

/* Add @sign for each page of @list to the per-zone census. */
static void vballoon_count_zones(struct vballoon_pages *vp,
				 struct list_head *list, long sign)
{
	struct page *page;

	list_for_each_entry(page, list, lru)
		atomic_long_add(sign, &vp->by_zone[page_zonenum(page)]);
}

static void vballoon_count_moved(struct vballoon_pages *vp,
				 struct page *newpage, struct page *page)
{
	atomic_long_dec(&vp->by_zone[page_zonenum(page)]);
	atomic_long_inc(&vp->by_zone[page_zonenum(newpage)]);
}

#ifdef VB_KERNEL_BALLOON
/*
 * The kernel's balloon core keeps the list, the managed page count,
 * NR_BALLOON_PAGES and the BALLOON_* events; it inserts the new page and
 * frees the old one after a migration the driver agreed to.
 */
static int vballoon_core_migrate(struct balloon_dev_info *b,
				 struct page *newpage, struct page *page,
				 enum migrate_mode mode)
{
	struct vballoon_pages *vp = container_of(b, struct vballoon_pages, b);
	int err;

	err = vp->migrate(vp->priv, newpage, page);
	if (err)
		return err;
	vballoon_count_moved(vp, newpage, page);
	return 0;
}

static int vballoon_pages_setup(struct vballoon_pages *vp)
{
	balloon_devinfo_init(&vp->b);
	vp->b.migratepage = vballoon_core_migrate;
	vp->b.adjust_managed_page_count = vp->adjust_managed;
	return 0;
}

static void vballoon_pages_teardown(struct vballoon_pages *vp)
{
}

unsigned int vballoon_pages_enqueue(struct vballoon_pages *vp,
				    struct list_head *list)
{
	vballoon_count_zones(vp, list, 1);
	return balloon_page_list_enqueue(&vp->b, list);
}

unsigned int vballoon_pages_dequeue(struct vballoon_pages *vp,
				    struct list_head *list, unsigned int n)
{
	LIST_HEAD(taken);
	unsigned int got;

	got = balloon_page_list_dequeue(&vp->b, &taken, n);
	vballoon_count_zones(vp, &taken, -1);
	list_splice_tail(&taken, list);
	return got;
}

unsigned long vballoon_pages_isolated(struct vballoon_pages *vp)
{
	return READ_ONCE(vp->b.isolated_pages);
}

const char *vballoon_pages_scheme(void)
{
	return "kernel balloon core";
}

#else /* the module keeps its own list */

/*
 * Pages leaving or joining the guest: the managed count (so MemTotal and
 * the watermarks follow), NR_BALLOON_PAGES where the kernel keeps it, and
 * the BALLOON_* events. Pages of one zone are accounted in one call.
 */
static void vballoon_account(struct vballoon_pages *vp, struct list_head *list,
			     long sign)
{
	struct page *page, *first = NULL;
	long run = 0;

	list_for_each_entry(page, list, lru) {
		vballoon_balloon_pages_add(page, sign);
		if (!vp->adjust_managed)
			continue;
		if (first && page_zone(page) != page_zone(first)) {
			adjust_managed_page_count(first, -sign * run);
			run = 0;
		}
		if (!run)
			first = page;
		run++;
	}
	if (run)
		adjust_managed_page_count(first, -sign * run);
}

#ifdef VB_HAVE_MOVABLE_OPS
static const struct movable_operations vballoon_mops;

static void vballoon_set_movable(struct vballoon_pages *vp, struct page *page)
{
	__SetPageMovable(page, &vballoon_mops);
}
#else
static void vballoon_set_movable(struct vballoon_pages *vp, struct page *page)
{
	__SetPageMovable(page, vp->inode->i_mapping);
}
#endif

/* Caller holds vp->lock and the page lock. */
static void vballoon_page_insert(struct vballoon_pages *vp, struct page *page)
{
	__SetPageOffline(page);
	vballoon_set_movable(vp, page);
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

unsigned int vballoon_pages_enqueue(struct vballoon_pages *vp,
				    struct list_head *list)
{
	struct page *page, *tmp;
	unsigned long flags;
	unsigned int n = 0;

	vballoon_count_zones(vp, list, 1);
	vballoon_account(vp, list, 1);
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
	vballoon_count_inflate(n);
	return n;
}

unsigned int vballoon_pages_dequeue(struct vballoon_pages *vp,
				    struct list_head *list, unsigned int n)
{
	struct page *page, *tmp;
	unsigned int taken = 0;
	unsigned long flags;
	LIST_HEAD(out);

	spin_lock_irqsave(&vp->lock, flags);
	list_for_each_entry_safe(page, tmp, &vp->pages, lru) {
		if (taken == n)
			break;
		/* Locked by someone about to isolate it: it comes back. */
		if (!trylock_page(page))
			continue;
		list_move(&page->lru, &out);
		vballoon_page_finalize(page);
		unlock_page(page);
		taken++;
	}
	spin_unlock_irqrestore(&vp->lock, flags);
	vballoon_count_zones(vp, &out, -1);
	vballoon_account(vp, &out, -1);
	list_splice_tail(&out, list);
	vballoon_count_deflate(taken);
	return taken;
}

unsigned long vballoon_pages_isolated(struct vballoon_pages *vp)
{
	return READ_ONCE(vp->isolated);
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

/* Both pages locked by migration; @page isolated, @newpage fresh. */
static int vballoon_page_migrate(struct page *newpage, struct page *page,
				 enum migrate_mode mode)
{
	struct vballoon_pages *vp = (struct vballoon_pages *)page_private(page);
	unsigned long flags;
	int err;

	err = vp->migrate(vp->priv, newpage, page);
	if (err)
		return err;

	get_page(newpage);
	spin_lock_irqsave(&vp->lock, flags);
	vballoon_page_insert(vp, newpage);
	vp->isolated--;
	spin_unlock_irqrestore(&vp->lock, flags);
	vballoon_count_migrate();
	vballoon_count_moved(vp, newpage, page);
	vballoon_balloon_pages_add(page, -1);
	vballoon_balloon_pages_add(newpage, 1);
	if (vp->adjust_managed && page_zone(page) != page_zone(newpage)) {
		adjust_managed_page_count(page, 1);
		adjust_managed_page_count(newpage, -1);
	}

	/* Migration frees the old page once the balloon's reference goes. */
	vballoon_page_finalize(page);
	put_page(page);
	return MIGRATEPAGE_SUCCESS;
}

#ifdef VB_HAVE_MOVABLE_OPS
static const struct movable_operations vballoon_mops = {
	.isolate_page = vballoon_page_isolate,
	.migrate_page = vballoon_page_migrate,
	.putback_page = vballoon_page_putback,
};

static int vballoon_pages_setup(struct vballoon_pages *vp)
{
	return 0;
}

static void vballoon_pages_teardown(struct vballoon_pages *vp)
{
}

const char *vballoon_pages_scheme(void)
{
	return "movable_operations";
}
#else
static int vballoon_aops_migrate(struct address_space *mapping,
				 struct page *newpage, struct page *page,
				 enum migrate_mode mode)
{
	/* Balloon pages have no contents to copy or not copy. */
	if (mode == MIGRATE_SYNC_NO_COPY)
		return -EINVAL;
	return vballoon_page_migrate(newpage, page, mode);
}

static const struct address_space_operations vballoon_aops = {
	.isolate_page = vballoon_page_isolate,
	.migratepage = vballoon_aops_migrate,
	.putback_page = vballoon_page_putback,
};

/* Not "balloon-kvm": the in-tree driver may mount its own beside ours. */
#define VBALLOON_FS_MAGIC	0x7662616c

static int vballoon_init_fs_context(struct fs_context *fc)
{
	return init_pseudo(fc, VBALLOON_FS_MAGIC) ? 0 : -ENOMEM;
}

/* No .owner: the mount would pin the module and rmmod would refuse. */
static struct file_system_type vballoon_fs = {
	.name = "vballoon",
	.init_fs_context = vballoon_init_fs_context,
	.kill_sb = kill_anon_super,
};

static int vballoon_pages_setup(struct vballoon_pages *vp)
{
	vp->mnt = kern_mount(&vballoon_fs);
	if (IS_ERR(vp->mnt))
		return PTR_ERR(vp->mnt);
	vp->inode = alloc_anon_inode(vp->mnt->mnt_sb);
	if (IS_ERR(vp->inode)) {
		kern_unmount(vp->mnt);
		return PTR_ERR(vp->inode);
	}
	vp->inode->i_mapping->a_ops = &vballoon_aops;
	return 0;
}

static void vballoon_pages_teardown(struct vballoon_pages *vp)
{
	iput(vp->inode);
	kern_unmount(vp->mnt);
}

const char *vballoon_pages_scheme(void)
{
	return "address_space_operations";
}
#endif /* VB_HAVE_MOVABLE_OPS */

#endif /* VB_KERNEL_BALLOON */

/**
 * vballoon_pages_create() - set up an empty balloon
 * @migrate: called to tell the host when compaction moves a balloon page
 * @priv: passed to @migrate
 * @adjust_managed: take ballooned pages out of the guest's managed page
 *                  count (MemTotal), as without DEFLATE_ON_OOM
 *
 * Return: the book-keeping, or an ERR_PTR().
 */
struct vballoon_pages *vballoon_pages_create(vballoon_migrate_fn migrate,
					     void *priv, bool adjust_managed)
{
	struct vballoon_pages *vp;
	int i, err;

	vp = kzalloc(sizeof(*vp), GFP_KERNEL);
	if (!vp)
		return ERR_PTR(-ENOMEM);
#ifndef VB_KERNEL_BALLOON
	spin_lock_init(&vp->lock);
	INIT_LIST_HEAD(&vp->pages);
#endif
	for (i = 0; i < MAX_NR_ZONES; i++)
		atomic_long_set(&vp->by_zone[i], 0);
	vp->migrate = migrate;
	vp->priv = priv;
	vp->adjust_managed = adjust_managed;
	err = vballoon_pages_setup(vp);
	if (err) {
		kfree(vp);
		return ERR_PTR(err);
	}
	return vp;
}

/**
 * vballoon_pages_destroy() - free the book-keeping of an empty balloon
 * @vp: the balloon; every page has been dequeued
 */
void vballoon_pages_destroy(struct vballoon_pages *vp)
{
	vballoon_pages_teardown(vp);
	kfree(vp);
}

/**
 * vballoon_pages_by_zone() - the balloon's pages per zone
 * @vp: the balloon
 * @by_zone: filled with the pages per zone index, isolated ones included
 *
 * Counted as pages come and go, so reading it costs nothing however large
 * the balloon.
 */
void vballoon_pages_by_zone(struct vballoon_pages *vp,
			    unsigned long by_zone[MAX_NR_ZONES])
{
	int i;

	for (i = 0; i < MAX_NR_ZONES; i++)
		by_zone[i] = max(atomic_long_read(&vp->by_zone[i]), 0L);
}
