/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The interface between the virtio driver (virtio_balloon.c) and the
 * balloon's page book-keeping (balloon_compaction.c).
 */
#ifndef VBALLOON_H
#define VBALLOON_H

#include <linux/list.h>
#include <linux/mm_types.h>
#include <linux/spinlock.h>

struct vballoon_pages;

/**
 * typedef vballoon_migrate_fn - tell the host that a balloon page moved
 * @vp: the balloon the page belongs to
 * @newpage: the page taking @page's place; locked, not yet in the balloon
 * @page: the isolated balloon page being replaced; locked
 *
 * Called by page migration. The callee puts @newpage in the balloon with
 * vballoon_pages_replace(), tells the host, and retires @page with
 * vballoon_page_retire().
 *
 * Return: MIGRATEPAGE_SUCCESS, or -EAGAIN to have migration retry later.
 */
typedef int (*vballoon_migrate_fn)(struct vballoon_pages *vp,
				   struct page *newpage, struct page *page);

/**
 * struct vballoon_pages - the pages one balloon device holds
 * @lock: protects @pages and @isolated; taken from any context
 * @pages: pages in the balloon that are not isolated for migration
 * @isolated: balloon pages currently isolated by page migration
 * @migrate: the driver's migration callback
 */
struct vballoon_pages {
	spinlock_t lock;		/* guards @pages and @isolated */
	struct list_head pages;
	unsigned long isolated;
	vballoon_migrate_fn migrate;
};

void vballoon_pages_init(struct vballoon_pages *vp,
			 vballoon_migrate_fn migrate);
struct page *vballoon_page_alloc(void);
void vballoon_page_free(struct page *page);
unsigned int vballoon_pages_enqueue(struct vballoon_pages *vp,
				    struct list_head *list);
unsigned int vballoon_pages_dequeue(struct vballoon_pages *vp,
				    struct list_head *list, unsigned int n);
void vballoon_pages_replace(struct vballoon_pages *vp, struct page *newpage);
void vballoon_page_retire(struct page *page);
unsigned long vballoon_pages_isolated(struct vballoon_pages *vp);
void vballoon_pages_census(struct vballoon_pages *vp, unsigned long *by_zone,
			   unsigned long *by_order);

#endif /* VBALLOON_H */
