/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel shims for vballoon. Force-included into every file by Kbuild, so
 * the driver sources never test kernel versions themselves. What a kernel
 * offers comes from Kbuild's feature probes (VB_HAVE_*), which read its
 * headers; each shim names the kernel change it covers.
 */
#ifndef VBALLOON_COMPAT_H
#define VBALLOON_COMPAT_H

/* Same as the sources' own: this header is read before them. */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/gfp.h>
#include <linux/migrate.h>
#include <linux/mm.h>
#include <linux/mmzone.h>
#include <linux/page_reporting.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/virtio_config.h>
#include <linux/vmstat.h>
#include <linux/workqueue.h>
#include <uapi/linux/virtio_balloon.h>

#if !IS_ENABLED(CONFIG_VIRTIO)
#error "vballoon needs a kernel with CONFIG_VIRTIO"
#endif

/*
 * Balloon page migration goes through the kernel's balloon core on every
 * kernel (balloon_compaction.c):
 * v7.0: linux/balloon.h, CONFIG_BALLOON, a core that keeps the managed
 * page count; v6.17 made the migration core pick a page's operations by
 * its type, and that interface (v6.17 to v6.19) is not implemented here.
 * v6.0: the core's balloon_mops; before, its balloon_aops, which want an
 * inode of the driver's own pseudo file system.
 */
#ifdef VB_HAVE_MOVABLE_BY_TYPE
#if !defined(VB_HAVE_BALLOON_H) || !defined(VB_HAVE_BALLOON_ADJUST)
#error "vballoon: the balloon core of v6.17 to v6.19 is not supported (v7.0's is)"
#endif
#if !IS_ENABLED(CONFIG_BALLOON)
#error "vballoon needs a kernel with CONFIG_BALLOON (the kernel's balloon core)"
#endif
#include <linux/balloon.h>
#define VB_KERNEL_BALLOON
#else
#if !IS_ENABLED(CONFIG_MEMORY_BALLOON)
#error "vballoon needs a kernel with CONFIG_MEMORY_BALLOON (the kernel's balloon core)"
#endif
#include <linux/balloon_compaction.h>
#if !defined(VB_HAVE_BALLOON_MOPS) && IS_ENABLED(CONFIG_BALLOON_COMPACTION)
#include <linux/fs.h>
#include <linux/mount.h>
#include <linux/pseudo_fs.h>
#define VB_BALLOON_AOPS
#endif
#endif

/*
 * Whether balloon pages can migrate: with CONFIG_BALLOON_MIGRATION (v7.0),
 * before with CONFIG_BALLOON_COMPACTION, the options that make the core's
 * pages movable. Only then are they allocated movable: pages that cannot
 * move would pin ZONE_MOVABLE and CMA areas.
 */
#ifdef VB_KERNEL_BALLOON
#define VBALLOON_CAN_MIGRATE	IS_ENABLED(CONFIG_BALLOON_MIGRATION)
#else
#define VBALLOON_CAN_MIGRATE	IS_ENABLED(CONFIG_BALLOON_COMPACTION)
#endif
#define VBALLOON_GFP_MOVABLE	(VBALLOON_CAN_MIGRATE ? __GFP_MOVABLE : 0)

/*
 * BALLOON_MIGRATE (CONFIG_BALLOON_COMPACTION): before v7.0 the balloon core
 * counts inflate and deflate but leaves migration to the driver; from v7.0
 * (CONFIG_BALLOON) it counts all three.
 */
static inline void vballoon_count_migrate(void)
{
#if defined(CONFIG_BALLOON_COMPACTION) && !defined(VB_KERNEL_BALLOON)
	count_vm_event(BALLOON_MIGRATE);
#endif
}

/* v6.18: MIGRATEPAGE_SUCCESS gone; migration callbacks return 0. */
#ifndef MIGRATEPAGE_SUCCESS
#define MIGRATEPAGE_SUCCESS		0
#endif

/*
 * v6.16: NR_BALLOON_PAGES, /proc/meminfo's "Balloon:" line, kept by the
 * drivers until v7.0's balloon core keeps it itself.
 */
static inline void vballoon_balloon_pages_add(struct page *page, long n)
{
#if defined(VB_HAVE_NR_BALLOON_PAGES) && !defined(VB_KERNEL_BALLOON)
	mod_node_page_state(page_pgdat(page), NR_BALLOON_PAGES, n);
#endif
}

/*
 * v6.12: the statistics OOM_KILL .. DIRECT_RECLAIM joined the uapi header.
 * Detected by the header's own macro; the tags are the spec's, whatever the
 * kernel headers know.
 */
#ifndef VIRTIO_BALLOON_S_OOM_KILL
#define VIRTIO_BALLOON_S_OOM_KILL	10
#define VIRTIO_BALLOON_S_ALLOC_STALL	11
#define VIRTIO_BALLOON_S_ASYNC_SCAN	12
#define VIRTIO_BALLOON_S_DIRECT_SCAN	13
#define VIRTIO_BALLOON_S_ASYNC_RECLAIM	14
#define VIRTIO_BALLOON_S_DIRECT_RECLAIM	15
#endif

/*
 * v7.x: PGSCAN_* and PGSTEAL_* moved from the vm events to the node
 * statistics; indexing the events with them reads unrelated counters.
 * Return: the reclaim counter @item, in pages.
 */
#ifdef VB_HAVE_NODE_RECLAIM_STATS
static inline unsigned long vballoon_reclaim_stat(const unsigned long *events,
						  enum node_stat_item item)
{
	return global_node_page_state(item);
}
#else
static inline unsigned long vballoon_reclaim_stat(const unsigned long *events,
						  enum vm_event_item item)
{
	return events[item];
}
#endif

/*
 * v6.11: find_vqs() takes an array of struct virtqueue_info instead of
 * parallel callback and name arrays.
 */
static inline int vballoon_find_vqs(struct virtio_device *vdev,
				    unsigned int nvqs, struct virtqueue *vqs[],
				    vq_callback_t *callbacks[],
				    const char * const names[])
{
#ifdef VB_HAVE_VQ_INFO
	struct virtqueue_info info[8] = {};
	unsigned int i;

	if (WARN_ON(nvqs > ARRAY_SIZE(info)))
		return -EINVAL;
	for (i = 0; i < nvqs; i++) {
		info[i].name = names[i];
		info[i].callback = callbacks[i];
	}
	return virtio_find_vqs(vdev, nvqs, vqs, info, NULL);
#else
	return virtio_find_vqs(vdev, nvqs, vqs, callbacks, names, NULL);
#endif
}

/*
 * v6.17: WQ_PERCPU; workqueues are to say per-CPU or unbound, and 7.x
 * warns at alloc_workqueue() about one that says neither.
 */
#ifdef VB_HAVE_WQ_PERCPU
#define VBALLOON_WQ_PERCPU	WQ_PERCPU
#else
#define VBALLOON_WQ_PERCPU	0
#endif

/* v5.17: virtio_reset_device(); before, the transport's reset op. */
static inline void vballoon_reset_device(struct virtio_device *vdev)
{
#ifdef VB_HAVE_RESET_DEVICE
	virtio_reset_device(vdev);
#else
	vdev->config->reset(vdev);
#endif
}

/* v5.11: page_poisoning_enabled_static(), a static key. */
static inline bool vballoon_poisoning(void)
{
#ifdef VB_HAVE_POISON_STATIC
	return page_poisoning_enabled_static();
#else
	return page_poisoning_enabled();
#endif
}

/*
 * v5.14: page_reporting_dev_info.order; before, reporting always takes
 * pageblock_order blocks. Return: the order in force.
 */
static inline unsigned int
vballoon_reporting_order(struct page_reporting_dev_info *pr, unsigned int order)
{
#ifdef VB_HAVE_REPORTING_ORDER
	pr->order = order;
	return order;
#else
	return pageblock_order;
#endif
}

/*
 * v7.x: page_reporting_dev_info.capacity lets a queue smaller than
 * PAGE_REPORTING_CAPACITY take reports. Return: false where it cannot.
 */
static inline bool
vballoon_reporting_capacity(struct page_reporting_dev_info *pr,
			    unsigned int capacity)
{
#ifdef VB_HAVE_REPORTING_CAPACITY
	pr->capacity = min_t(unsigned int, capacity, PAGE_REPORTING_CAPACITY);
	return true;
#else
	return capacity >= PAGE_REPORTING_CAPACITY;
#endif
}

/*
 * The largest buddy order. v6.4: MAX_ORDER became inclusive, a change of
 * meaning no header shows; v6.8: renamed MAX_PAGE_ORDER, found by name.
 */
#if defined(MAX_PAGE_ORDER)
#define VBALLOON_MAX_ORDER	MAX_PAGE_ORDER
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define VBALLOON_MAX_ORDER	MAX_ORDER
#else
#define VBALLOON_MAX_ORDER	(MAX_ORDER - 1)
#endif

/*
 * Up to @n order-0 pages onto @list. v5.13: alloc_pages_bulk_list(); v6.14
 * kept only the array form, alloc_pages_bulk(); before v5.13 one at a time.
 * Return: pages allocated.
 */
static inline unsigned int vballoon_alloc_bulk(gfp_t gfp, unsigned int n,
					       struct list_head *list)
{
#if defined(VB_HAVE_BULK_LIST)
	return alloc_pages_bulk_list(gfp, n, list);
#elif defined(VB_HAVE_BULK_ARRAY)
	struct page *pages[32];
	unsigned int done = 0, want, got, i;

	while (done < n) {
		want = min_t(unsigned int, n - done, ARRAY_SIZE(pages));
		memset(pages, 0, sizeof(pages));
		got = alloc_pages_bulk(gfp, want, pages);
		for (i = 0; i < got; i++)
			list_add_tail(&pages[i]->lru, list);
		done += got;
		if (got < want)
			break;
	}
	return done;
#else
	unsigned int done;
	struct page *page;

	for (done = 0; done < n; done++) {
		page = alloc_page(gfp);
		if (!page)
			break;
		list_add_tail(&page->lru, list);
	}
	return done;
#endif
}

/*
 * v6.7: a CPU's per-CPU free lists grow up to high_max after a run of
 * frees and shrink back to high_min by themselves, an eighth of the
 * difference a second (decay_pcp_high()); before, their size was fixed.
 * Return: pages on this CPU's lists above high_min, all zones; 0 where
 * no such pages come back on their own.
 */
static inline unsigned long vballoon_pcp_surplus(void)
{
	unsigned long surplus = 0;
#ifdef VB_HAVE_PCP_HIGH_MIN
	struct per_cpu_pages *pcp;
	struct zone *zone;
	int nid, i, n;

	for_each_online_node(nid) {
		for (i = 0; i < MAX_NR_ZONES; i++) {
			zone = &NODE_DATA(nid)->node_zones[i];
			if (!managed_zone(zone))
				continue;
			/* A hint only: read without the list's lock. */
			pcp = raw_cpu_ptr(zone->per_cpu_pageset);
			n = READ_ONCE(pcp->count) - READ_ONCE(pcp->high_min);
			if (n > 0)
				surplus += n;
		}
	}
#endif
	return surplus;
}

/*
 * v6.7: shrinkers are allocated by shrinker_alloc() and carry private data;
 * v6.0: register_shrinker() takes a name; before, the shrinker alone.
 */
#ifdef VB_HAVE_SHRINKER_ALLOC
static inline struct shrinker *
vballoon_shrinker_create(unsigned long (*count)(struct shrinker *,
						struct shrink_control *),
			 unsigned long (*scan)(struct shrinker *,
					       struct shrink_control *),
			 void *priv, const char *name)
{
	struct shrinker *s = shrinker_alloc(0, "%s", name);

	if (!s)
		return NULL;
	s->count_objects = count;
	s->scan_objects = scan;
	s->private_data = priv;
	shrinker_register(s);
	return s;
}

static inline void *vballoon_shrinker_private(struct shrinker *s)
{
	return s->private_data;
}

static inline void vballoon_shrinker_destroy(struct shrinker *s)
{
	shrinker_free(s);
}
#else
struct vballoon_shrinker {
	struct shrinker s;
	void *priv;
};

static inline struct shrinker *
vballoon_shrinker_create(unsigned long (*count)(struct shrinker *,
						struct shrink_control *),
			 unsigned long (*scan)(struct shrinker *,
					       struct shrink_control *),
			 void *priv, const char *name)
{
	struct vballoon_shrinker *vs = kzalloc(sizeof(*vs), GFP_KERNEL);
	int err;

	if (!vs)
		return NULL;
	vs->s.count_objects = count;
	vs->s.scan_objects = scan;
	vs->s.seeks = DEFAULT_SEEKS;
	vs->priv = priv;
#ifdef VB_HAVE_SHRINKER_NAME
	err = register_shrinker(&vs->s, "%s", name);
#else
	err = register_shrinker(&vs->s);
#endif
	if (err) {
		kfree(vs);
		return NULL;
	}
	return &vs->s;
}

static inline void *vballoon_shrinker_private(struct shrinker *s)
{
	return container_of(s, struct vballoon_shrinker, s)->priv;
}

static inline void vballoon_shrinker_destroy(struct shrinker *s)
{
	unregister_shrinker(s);
	kfree(container_of(s, struct vballoon_shrinker, s));
}
#endif

/*
 * What this build of vballoon does without, for the load message and
 * Documentation/kernels.rst. Each entry names what the kernel lacks.
 */
static inline void vballoon_compat_report(void)
{
#if !defined(VB_HAVE_BULK_LIST) && !defined(VB_HAVE_BULK_ARRAY)
	pr_info("this kernel has no bulk page allocator: inflating one page at a time\n");
#endif
#ifndef VB_HAVE_REPORTING_ORDER
	pr_info("this kernel reports free pages in blocks of order %u only: report_order is ignored\n",
		(unsigned int)pageblock_order);
#endif
#ifndef VB_HAVE_PCP_HIGH_MIN
	pr_info("this kernel's per-CPU free lists have a fixed size: no surplus to take first near the floor\n");
#endif
#ifndef CONFIG_VM_EVENT_COUNTERS
	pr_info("this kernel keeps no vm event counters: the host gets no swap, fault, OOM kill or allocation stall statistics\n");
#endif
	if (!VBALLOON_CAN_MIGRATE)
		pr_info("this kernel cannot migrate balloon pages: they are not allocated movable, and compaction leaves them where they are\n");
	else if (!IS_ENABLED(CONFIG_COMPACTION))
		pr_info("this kernel has no compaction: balloon pages move only for memory offlining and contiguous allocations\n");
}

#endif /* VBALLOON_COMPAT_H */
