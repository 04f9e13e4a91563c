// SPDX-License-Identifier: GPL-2.0
/*
 * What vballoon shows: sysfs attributes under the device's balloon/
 * directory, and debugfs.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "vb.h"

/*
 * sysfs: /sys/bus/virtio/devices/virtioN/balloon/. Documented in
 * Documentation/ABI/testing/sysfs-bus-virtio-devices-vballoon.
 */
static struct vballoon *vb_from_dev(struct device *dev)
{
	return dev_to_virtio(dev)->priv;
}

static ssize_t target_pages_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n",
			  vb_target(vb_from_dev(dev)) / VB_UNITS_PER_PAGE);
}
static DEVICE_ATTR_RO(target_pages);

static ssize_t target_bytes_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", (u64)vb_target(vb_from_dev(dev)) <<
			  VIRTIO_BALLOON_PFN_SHIFT);
}
static DEVICE_ATTR_RO(target_bytes);

static ssize_t actual_pages_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n", vb_held_pages(vb_from_dev(dev)));
}
static DEVICE_ATTR_RO(actual_pages);

static ssize_t actual_bytes_show(struct device *dev,
				 struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  (u64)READ_ONCE(vb_from_dev(dev)->num_pages) <<
			  VIRTIO_BALLOON_PFN_SHIFT);
}
static DEVICE_ATTR_RO(actual_bytes);

static const char * const vb_feature_names[] = {
	[VIRTIO_BALLOON_F_MUST_TELL_HOST] = "must_tell_host",
	[VIRTIO_BALLOON_F_STATS_VQ] = "stats_vq",
	[VIRTIO_BALLOON_F_DEFLATE_ON_OOM] = "deflate_on_oom",
	[VIRTIO_BALLOON_F_FREE_PAGE_HINT] = "free_page_hint",
	[VIRTIO_BALLOON_F_PAGE_POISON] = "page_poison",
	[VIRTIO_BALLOON_F_REPORTING] = "reporting",
};

static ssize_t features_show(struct device *dev,
			     struct device_attribute *attr, char *buf)
{
	struct vballoon *vb = vb_from_dev(dev);
	ssize_t len = 0;
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(vb_feature_names); i++)
		if (vb_has(vb, i))
			len += sysfs_emit_at(buf, len, "%s%s", len ? " " : "",
					     vb_feature_names[i]);
	return len + sysfs_emit_at(buf, len, "\n");
}
static DEVICE_ATTR_RO(features);

static ssize_t floor_mib_show(struct device *dev,
			      struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%lu\n",
			  vb_floor(vb_from_dev(dev)) >> (20 - PAGE_SHIFT));
}
static DEVICE_ATTR_RO(floor_mib);

static ssize_t reserve_mib_show(struct device *dev,
				struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(vb_from_dev(dev)->reserve_mib));
}

static ssize_t reserve_mib_store(struct device *dev,
				 struct device_attribute *attr,
				 const char *buf, size_t count)
{
	struct vballoon *vb = vb_from_dev(dev);
	unsigned int n;

	if (kstrtouint(buf, 0, &n) || n > vb_ram_mib(vb_held_pages(vb)))
		return -EINVAL;
	WRITE_ONCE(vb->reserve_mib, n);
	vb_kick(vb);
	return count;
}
static DEVICE_ATTR_RW(reserve_mib);

static ssize_t max_balloon_pct_show(struct device *dev,
				    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(vb_from_dev(dev)->max_pct));
}

static ssize_t max_balloon_pct_store(struct device *dev,
				     struct device_attribute *attr,
				     const char *buf, size_t count)
{
	struct vballoon *vb = vb_from_dev(dev);
	unsigned int n;

	if (kstrtouint(buf, 0, &n) || n < max_balloon_pct.min ||
	    n > max_balloon_pct.max)
		return -EINVAL;
	WRITE_ONCE(vb->max_pct, n);
	vb_kick(vb);
	return count;
}
static DEVICE_ATTR_RW(max_balloon_pct);

static ssize_t inflate_show(struct device *dev,
			    struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(vb_from_dev(dev)->inflate));
}

static ssize_t inflate_store(struct device *dev, struct device_attribute *attr,
			     const char *buf, size_t count)
{
	struct vballoon *vb = vb_from_dev(dev);
	bool on;

	if (kstrtobool(buf, &on))
		return -EINVAL;
	WRITE_ONCE(vb->inflate, on);
	vb_kick(vb);
	return count;
}
static DEVICE_ATTR_RW(inflate);

/* A read-only counter: the attribute and the counter it shows. */
struct vb_counter_attr {
	struct device_attribute attr;
	enum vb_counter idx;
};

static ssize_t vb_counter_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct vb_counter_attr *ca = container_of(attr, struct vb_counter_attr,
						  attr);

	return sysfs_emit(buf, "%lld\n",
			  atomic64_read(&vb_from_dev(dev)->cnt[ca->idx]));
}

#define VB_COUNTER_ATTR(_name, _idx)					\
	static struct vb_counter_attr vb_counter_attr_##_name = {	\
		.attr = __ATTR(_name, 0444, vb_counter_show, NULL),	\
		.idx = _idx,						\
	}

VB_COUNTER_ATTR(inflated_pages, VB_CNT_INFLATED_PAGES);
VB_COUNTER_ATTR(deflated_pages, VB_CNT_DEFLATED_PAGES);
VB_COUNTER_ATTR(oom_deflated_pages, VB_CNT_OOM_DEFLATED_PAGES);
VB_COUNTER_ATTR(reserve_deflated_pages, VB_CNT_RESERVE_DEFLATED_PAGES);
VB_COUNTER_ATTR(pressure_deflated_pages, VB_CNT_PRESSURE_DEFLATED_PAGES);
VB_COUNTER_ATTR(migrated_pages, VB_CNT_MIGRATED_PAGES);
VB_COUNTER_ATTR(alloc_failures, VB_CNT_ALLOC_FAILURES);
VB_COUNTER_ATTR(last_alloc_failure_ms, VB_CNT_LAST_ALLOC_FAILURE_MS);
VB_COUNTER_ATTR(refusals, VB_CNT_REFUSALS);
VB_COUNTER_ATTR(hint_rounds, VB_CNT_HINT_ROUNDS);
VB_COUNTER_ATTR(hinted_pages, VB_CNT_HINTED_PAGES);
VB_COUNTER_ATTR(reports, VB_CNT_REPORTS);
VB_COUNTER_ATTR(reported_bytes, VB_CNT_REPORTED_BYTES);
VB_COUNTER_ATTR(stats_requests, VB_CNT_STATS_REQUESTS);
VB_COUNTER_ATTR(pcp_pages, VB_CNT_PCP_PAGES);
VB_COUNTER_ATTR(high_pages, VB_CNT_HIGH_PAGES);

static struct attribute *vb_attrs[] = {
	&dev_attr_target_pages.attr,
	&dev_attr_target_bytes.attr,
	&dev_attr_actual_pages.attr,
	&dev_attr_actual_bytes.attr,
	&dev_attr_features.attr,
	&dev_attr_floor_mib.attr,
	&dev_attr_reserve_mib.attr,
	&dev_attr_max_balloon_pct.attr,
	&dev_attr_inflate.attr,
	&vb_counter_attr_inflated_pages.attr.attr,
	&vb_counter_attr_deflated_pages.attr.attr,
	&vb_counter_attr_oom_deflated_pages.attr.attr,
	&vb_counter_attr_reserve_deflated_pages.attr.attr,
	&vb_counter_attr_pressure_deflated_pages.attr.attr,
	&vb_counter_attr_migrated_pages.attr.attr,
	&vb_counter_attr_alloc_failures.attr.attr,
	&vb_counter_attr_last_alloc_failure_ms.attr.attr,
	&vb_counter_attr_refusals.attr.attr,
	&vb_counter_attr_hint_rounds.attr.attr,
	&vb_counter_attr_hinted_pages.attr.attr,
	&vb_counter_attr_reports.attr.attr,
	&vb_counter_attr_reported_bytes.attr.attr,
	&vb_counter_attr_stats_requests.attr.attr,
	&vb_counter_attr_pcp_pages.attr.attr,
	&vb_counter_attr_high_pages.attr.attr,
	NULL,
};

static const struct attribute_group vb_attr_group = {
	.name = "balloon",
	.attrs = vb_attrs,
};

const struct attribute_group *vb_attr_groups[] = {
	&vb_attr_group,
	NULL,
};

/*
 * debugfs: /sys/kernel/debug/vballoon/virtioN, the state a developer
 * debugging a host wants. Sizes in guest pages unless said otherwise; no
 * kernel addresses.
 */
struct dentry *vb_debugfs_root;

static const char * const vb_stat_names[VB_STATS_MAX] = {
	[VIRTIO_BALLOON_S_SWAP_IN] = "swap_in",
	[VIRTIO_BALLOON_S_SWAP_OUT] = "swap_out",
	[VIRTIO_BALLOON_S_MAJFLT] = "major_faults",
	[VIRTIO_BALLOON_S_MINFLT] = "minor_faults",
	[VIRTIO_BALLOON_S_MEMFREE] = "free",
	[VIRTIO_BALLOON_S_MEMTOT] = "total",
	[VIRTIO_BALLOON_S_AVAIL] = "available",
	[VIRTIO_BALLOON_S_CACHES] = "caches",
	[VIRTIO_BALLOON_S_HTLB_PGALLOC] = "hugetlb_allocations",
	[VIRTIO_BALLOON_S_HTLB_PGFAIL] = "hugetlb_failures",
	[VIRTIO_BALLOON_S_OOM_KILL] = "oom_kills",
	[VIRTIO_BALLOON_S_ALLOC_STALL] = "alloc_stalls",
	[VIRTIO_BALLOON_S_ASYNC_SCAN] = "async_scans",
	[VIRTIO_BALLOON_S_DIRECT_SCAN] = "direct_scans",
	[VIRTIO_BALLOON_S_ASYNC_RECLAIM] = "async_reclaims",
	[VIRTIO_BALLOON_S_DIRECT_RECLAIM] = "direct_reclaims",
};

static void vb_debugfs_zones(struct seq_file *m, struct vballoon *vb)
{
	struct pglist_data *pgdat = NODE_DATA(first_online_node);
	unsigned long by_zone[MAX_NR_ZONES];
	int i;

	vballoon_pages_by_zone(vb->pages, by_zone);
	seq_puts(m, "pages_by_zone:");
	for (i = 0; i < MAX_NR_ZONES; i++)
		if (by_zone[i])
			seq_printf(m, " %s=%lu", pgdat->node_zones[i].name,
				   by_zone[i]);
	seq_putc(m, '\n');
}

static int vb_debugfs_show(struct seq_file *m, void *unused)
{
	struct vballoon *vb = m->private;
	unsigned long floor = vb_floor(vb);
	unsigned long retry_at = READ_ONCE(vb->retry_at);
	u64 last_ms = READ_ONCE(vb->last_target_ms);
	unsigned int i, tag;

	seq_printf(m, "target_units: %u\n", vb_target(vb));
	seq_printf(m, "actual_units: %u\n", READ_ONCE(vb->num_pages));
	seq_printf(m, "goal_units: %u\n", min(vb_target(vb), vb_ceiling(vb)));
	seq_printf(m, "last_target_change: %u units from %u, %llu ms ago\n",
		   READ_ONCE(vb->last_target), READ_ONCE(vb->prev_target),
		   last_ms ? vb_now_ms() - last_ms : 0);
	seq_printf(m, "mem_available: %ld\n", si_mem_available());
	seq_printf(m, "watermark_boost: %lu\n", vb_boost_pages());
	seq_printf(m, "pcp_surplus: %lu (reading CPU), taken for this target %lu\n",
		   vballoon_pcp_surplus(), READ_ONCE(vb->pcp_taken));
	seq_printf(m, "floor: %lu (automatic %lu, reserve %u MiB), slack %lu\n",
		   floor, vb->floor_pages, READ_ONCE(vb->reserve_mib),
		   vb_slack(floor));
	seq_printf(m, "ceiling_units: %u\n", vb_ceiling(vb));
	seq_printf(m, "backoff_ms: %u, next inflate in %u ms\n",
		   READ_ONCE(vb->backoff_ms),
		   time_after(retry_at, jiffies) ?
		   jiffies_to_msecs(retry_at - jiffies) : 0);
	seq_printf(m, "buffers_in_flight: %u of %u\n", READ_ONCE(vb->inflight),
		   vb->max_inflight);
	seq_printf(m, "page_migration: %s\n", vballoon_pages_scheme());
	seq_printf(m, "isolated_pages: %lu\n",
		   vballoon_pages_isolated(vb->pages));
	vb_debugfs_zones(m, vb);
	if (vb->hint.wq)
		seq_printf(m, "hint: cmd_id %u, blocks held %lu of order %u\n",
			   READ_ONCE(vb->hint.cmd_id),
			   READ_ONCE(vb->hint.nr_blocks), VB_HINT_ORDER);
	if (!vb->stats_vq)
		return 0;
	seq_puts(m, "last_stats:");
	for (i = 0; i < READ_ONCE(vb->nr_stats); i++) {
		tag = virtio16_to_cpu(vb->vdev, vb->stats[i].tag);
		seq_printf(m, " %s=%llu",
			   tag < VB_STATS_MAX ? vb_stat_names[tag] : "?",
			   virtio64_to_cpu(vb->vdev, vb->stats[i].val));
	}
	seq_putc(m, '\n');
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(vb_debugfs);

/*
 * <device>-host_delay_ms: for tests, notify the host of inflate and deflate
 * buffers this many ms late (0-10000), as a host serving its queues in
 * another thread may see them, which TCG's synchronous kicks never show.
 */
#define VB_HOST_DELAY_MAX_MS	10000

static int vb_delay_get(void *data, u64 *val)
{
	struct vballoon *vb = data;

	*val = READ_ONCE(vb->host_delay_ms);
	return 0;
}

static int vb_delay_set(void *data, u64 val)
{
	struct vballoon *vb = data;

	if (val > VB_HOST_DELAY_MAX_MS)
		return -EINVAL;
	WRITE_ONCE(vb->host_delay_ms, val);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(vb_delay_fops, vb_delay_get, vb_delay_set, "%llu\n");

void vb_debugfs_add(struct vballoon *vb)
{
	char name[64];

	vb->debugfs = debugfs_create_file(dev_name(&vb->vdev->dev), 0400,
					  vb_debugfs_root, vb,
					  &vb_debugfs_fops);
	snprintf(name, sizeof(name), "%s-host_delay_ms",
		 dev_name(&vb->vdev->dev));
	vb->debugfs_delay = debugfs_create_file_unsafe(name, 0600,
						       vb_debugfs_root, vb,
						       &vb_delay_fops);
}
