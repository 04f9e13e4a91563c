/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel-version shims for vballoon. Force-included into every file by
 * Kbuild, so the driver sources never test LINUX_VERSION_CODE themselves.
 * Each shim names the kernel change it papers over.
 */
#ifndef VBALLOON_COMPAT_H
#define VBALLOON_COMPAT_H

/* Same as the sources' own: this header is read before them. */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/mmzone.h>
#include <linux/shrinker.h>
#include <linux/slab.h>
#include <linux/version.h>
#include <linux/virtio_config.h>
#include <uapi/linux/virtio_balloon.h>

#if LINUX_VERSION_CODE < KERNEL_VERSION(6, 1, 0) || \
	LINUX_VERSION_CODE >= KERNEL_VERSION(6, 13, 0)
#error "vballoon supports Linux 6.1 to 6.12"
#endif

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
 * v6.11: find_vqs() takes an array of struct virtqueue_info instead of
 * parallel callback and name arrays.
 */
static inline int vballoon_find_vqs(struct virtio_device *vdev,
				    unsigned int nvqs, struct virtqueue *vqs[],
				    vq_callback_t *callbacks[],
				    const char * const names[])
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 11, 0)
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
 * The largest buddy order. v6.4: MAX_ORDER became inclusive; v6.8: renamed
 * MAX_PAGE_ORDER. Detected by the new name where it exists.
 */
#if defined(MAX_PAGE_ORDER)
#define VBALLOON_MAX_ORDER	MAX_PAGE_ORDER
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
#define VBALLOON_MAX_ORDER	MAX_ORDER
#else
#define VBALLOON_MAX_ORDER	(MAX_ORDER - 1)
#endif

/*
 * v6.7: a CPU's per-CPU free lists grow up to high_max after a run of
 * frees and shrink back to high_min by themselves, an eighth of the
 * difference a second (decay_pcp_high()); before, their size was fixed.
 * Return: pages on this CPU's lists above high_min, all zones; 0 before
 * v6.7, where no such pages come back on their own.
 */
static inline unsigned long vballoon_pcp_surplus(void)
{
	unsigned long surplus = 0;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
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
 * before, the caller embedded one and registered it with a name.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 7, 0)
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

	if (!vs)
		return NULL;
	vs->s.count_objects = count;
	vs->s.scan_objects = scan;
	vs->s.seeks = DEFAULT_SEEKS;
	vs->priv = priv;
	if (register_shrinker(&vs->s, "%s", name)) {
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

#endif /* VBALLOON_COMPAT_H */
