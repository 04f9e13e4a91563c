// SPDX-License-Identifier: GPL-2.0
/*
 * vballoon: the balloon's page book-keeping and page migration.
 *
 * Pages in the balloon are marked PageOffline (dump tools skip them) and
 * movable, so that compaction can ask to move them; this file never talks
 * to the device: when a page is to move, the driver's callback tells the
 * host. On every kernel the list, its lock, isolation and putback are the
 * kernel's balloon core (struct balloon_dev_info), exported wherever
 * CONFIG_MEMORY_BALLOON (v7.0: CONFIG_BALLOON) is set. What ties a page to
 * the core's operations differs (include/compat.h picks):
 *
 * - v7.0: the core marks the page's type itself, and keeps the managed
 *   page count, NR_BALLOON_PAGES and every BALLOON_* event;
 * - v6.0 to v6.16: balloon_page_insert() sets the core's balloon_mops;
 * - before v6.0: the core's balloon_aops on an inode of a pseudo file
 *   system the module mounts, as the in-tree driver does.
 *
 * Before v7.0 the core counts BALLOON_INFLATE and BALLOON_DEFLATE only; the
 * module keeps the rest as the in-tree driver does: the managed page count,
 * NR_BALLOON_PAGES (v6.16), BALLOON_MIGRATE, and in its migratepage callback
 * inserting the new page and releasing the old one. The per-zone census is
 * the module's on every kernel.
 *
 * The core does all the module needs: the module has no movable
 * operations of its own on any kernel. The core's enqueue BUG()s on a page
 * someone else has locked, where the module's own waited for the lock; but
 * compaction locks only pages already movable (isolate_movable_page()
 * tests that under its own reference, before the trylock, so as not to
 * race the new owner's non-atomic flag updates), and an inflated page
 * becomes movable only in the core's enqueue, under its lock. Left is
 * memory failure handling, which may lock any page, the in-tree driver's
 * too.
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
 * @mnt: the pseudo file system of @b's inode, before v6.0
 * @migrate: the driver's callback that tells the host
 * @priv: the driver's argument to @migrate
 * @adjust_managed: pages leave the guest's managed count while ballooned
 * @by_zone: balloon pages per zone, isolated ones included
 */
struct vballoon_pages {
	struct balloon_dev_info b;
#ifdef VB_BALLOON_AOPS
	struct vfsmount *mnt;
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
/* v7.0: the core inserts the new page and frees the old one itself. */
static int vballoon_core_migrated(struct vballoon_pages *vp,
				  struct page *newpage, struct page *page)
{
	return 0;
}

/* v7.0: the core keeps the managed count and NR_BALLOON_PAGES. */
static void vballoon_account(struct vballoon_pages *vp, struct list_head *list,
			     long sign)
{
}
#else
/*
 * Pages leaving or joining the guest: the managed count (so MemTotal and
 * the watermarks follow) and NR_BALLOON_PAGES where the kernel keeps it.
 * Pages of one zone are accounted in one call.
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

/*
 * Before v7.0 the core leaves the swap to the driver, as the in-tree
 * virtballoon_migratepage() does it: @newpage joins the balloon with a
 * reference of its own, @page leaves it, and migration frees @page once
 * the balloon's reference goes. Both pages locked by migration.
 */
static int vballoon_core_migrated(struct vballoon_pages *vp,
				  struct page *newpage, struct page *page)
{
	unsigned long flags;

	get_page(newpage);
	vballoon_balloon_pages_add(page, -1);
	vballoon_balloon_pages_add(newpage, 1);
	if (vp->adjust_managed && page_zone(page) != page_zone(newpage)) {
		adjust_managed_page_count(page, 1);
		adjust_managed_page_count(newpage, -1);
	}
	spin_lock_irqsave(&vp->b.pages_lock, flags);
	balloon_page_insert(&vp->b, newpage);
	vp->b.isolated_pages--;
	spin_unlock_irqrestore(&vp->b.pages_lock, flags);
	vballoon_count_migrate();

	balloon_page_finalize(page);
	put_page(page);
	return MIGRATEPAGE_SUCCESS;
}
#endif /* VB_KERNEL_BALLOON */

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
	return vballoon_core_migrated(vp, newpage, page);
}

#ifdef VB_BALLOON_AOPS
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

/* Before v6.0 the core finds its operations through a page's mapping. */
static int vballoon_pages_setup(struct vballoon_pages *vp)
{
	vp->mnt = kern_mount(&vballoon_fs);
	if (IS_ERR(vp->mnt))
		return PTR_ERR(vp->mnt);
	vp->b.inode = alloc_anon_inode(vp->mnt->mnt_sb);
	if (IS_ERR(vp->b.inode)) {
		kern_unmount(vp->mnt);
		return PTR_ERR(vp->b.inode);
	}
	vp->b.inode->i_mapping->a_ops = &balloon_aops;
	return 0;
}

static void vballoon_pages_teardown(struct vballoon_pages *vp)
{
	iput(vp->b.inode);
	kern_unmount(vp->mnt);
}
#else
static int vballoon_pages_setup(struct vballoon_pages *vp)
{
	return 0;
}

static void vballoon_pages_teardown(struct vballoon_pages *vp)
{
}
#endif /* VB_BALLOON_AOPS */

unsigned int vballoon_pages_enqueue(struct vballoon_pages *vp,
				    struct list_head *list)
{
	vballoon_count_zones(vp, list, 1);
	vballoon_account(vp, list, 1);
	return balloon_page_list_enqueue(&vp->b, list);
}

unsigned int vballoon_pages_dequeue(struct vballoon_pages *vp,
				    struct list_head *list, unsigned int n)
{
	LIST_HEAD(taken);
	unsigned int got;

	got = balloon_page_list_dequeue(&vp->b, &taken, n);
	vballoon_count_zones(vp, &taken, -1);
	vballoon_account(vp, &taken, -1);
	list_splice_tail(&taken, list);
	return got;
}

unsigned long vballoon_pages_isolated(struct vballoon_pages *vp)
{
	return READ_ONCE(vp->b.isolated_pages);
}

/* Named for the operations behind the core, as debugfs has always shown. */
const char *vballoon_pages_scheme(void)
{
#if defined(VB_KERNEL_BALLOON)
	return "kernel balloon core";
#elif defined(VB_BALLOON_AOPS)
	return "address_space_operations";
#else
	return "movable_operations";
#endif
}

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
	for (i = 0; i < MAX_NR_ZONES; i++)
		atomic_long_set(&vp->by_zone[i], 0);
	vp->migrate = migrate;
	vp->priv = priv;
	vp->adjust_managed = adjust_managed;
	balloon_devinfo_init(&vp->b);
	vp->b.migratepage = vballoon_core_migrate;
#ifdef VB_KERNEL_BALLOON
	vp->b.adjust_managed_page_count = adjust_managed;
#endif
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
