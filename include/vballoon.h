/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The interface between the virtio driver (virtio_balloon.c) and the
 * balloon's page book-keeping (balloon_compaction.c). The driver sees no
 * list, lock or page flag of the balloon: which of the kernel's balloon
 * page migration schemes runs underneath is this interface's business.
 */
#ifndef VBALLOON_H
#define VBALLOON_H

#include <linux/list.h>
#include <linux/mm_types.h>
#include <linux/mmzone.h>

struct vballoon_pages;

/**
 * typedef vballoon_migrate_fn - tell the host that a balloon page moved
 * @priv: the driver's pointer given to vballoon_pages_create()
 * @newpage: the page taking @page's place; not yet in the balloon
 * @page: the isolated balloon page being replaced
 *
 * Called by page migration, in process context, with no balloon lock
 * held. The callee tells the host that @newpage is in the balloon and
 * @page is not; the book-keeping does the rest.
 *
 * Return: 0, or -EAGAIN to have migration retry later.
 */
typedef int (*vballoon_migrate_fn)(void *priv, struct page *newpage,
				   struct page *page);

struct vballoon_pages *vballoon_pages_create(vballoon_migrate_fn migrate,
					     void *priv, bool adjust_managed);
void vballoon_pages_destroy(struct vballoon_pages *vp);

/**
 * vballoon_pages_enqueue() - put freshly allocated pages in the balloon
 * @vp: the balloon
 * @list: order-0 pages of the page allocator, linked through page->lru;
 *        empty on return
 *
 * The pages leave the guest's managed count if the balloon was created so.
 * Context: process, may sleep.
 * Return: the number of pages moved into the balloon.
 */
unsigned int vballoon_pages_enqueue(struct vballoon_pages *vp,
				    struct list_head *list);

/**
 * vballoon_pages_dequeue() - take pages out of the balloon
 * @vp: the balloon
 * @list: where the pages go, added at its tail, linked through page->lru
 * @n: how many pages to take at most
 *
 * Pages isolated by migration are not taken: they come back to the
 * balloon shortly. The pages taken are back in the managed count and go
 * to __free_page() once the host may no longer touch them.
 *
 * Return: the number of pages taken.
 */
unsigned int vballoon_pages_dequeue(struct vballoon_pages *vp,
				    struct list_head *list, unsigned int n);

/**
 * vballoon_pages_isolated() - how many balloon pages migration holds now
 * @vp: the balloon
 *
 * Return: the number of isolated pages, a snapshot; they are still in the
 * balloon.
 */
unsigned long vballoon_pages_isolated(struct vballoon_pages *vp);
void vballoon_pages_by_zone(struct vballoon_pages *vp,
			    unsigned long by_zone[MAX_NR_ZONES]);

/**
 * vballoon_pages_scheme() - how this build ties balloon pages to the
 * kernel's balloon core
 *
 * Return: "kernel balloon core" (v7.0), "movable_operations" (the core's
 * balloon_mops) or "address_space_operations" (its balloon_aops).
 */
const char *vballoon_pages_scheme(void);

#endif /* VBALLOON_H */
