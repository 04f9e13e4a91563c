// SPDX-License-Identifier: GPL-2.0
/*
 * vballoon: a virtio memory balloon driver.
 *
 * The host sets a target size in 4 KiB units (num_pages); the driver
 * inflates by allocating guest pages and handing their frame numbers to the
 * host on the inflate queue, deflates by handing them back on the deflate
 * queue and freeing them, and reports what it holds in `actual`. A stats
 * queue carries the guest's memory statistics to the host on request.
 *
 * This file is the device: module parameters, probe and remove, the
 * virtqueues, config changes, freeze and restore, shutdown. include/vb.h
 * says where the rest is.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "vb.h"

#define CREATE_TRACE_POINTS
#include "vballoon_trace.h"

static int vb_uint_param_set(const char *val, const struct kernel_param *kp)
{
	struct vb_uint_param *p = kp->arg;
	unsigned int n;

	if (kstrtouint(val, 0, &n) || n < p->min || n > p->max) {
		pr_err("%s: '%.*s' is not a whole number from %u to %u\n",
		       kp->name, (int)strcspn(val, "\n"), val, p->min, p->max);
		return -EINVAL;
	}
	WRITE_ONCE(p->val, n);
	return 0;
}

/* Guest memory in MiB, balloon included: the most a reserve can be. */
unsigned int vb_ram_mib(unsigned long balloon_pages)
{
	return (totalram_pages() + balloon_pages) >> (20 - PAGE_SHIFT);
}

static int vb_reserve_param_set(const char *val,
				const struct kernel_param *kp)
{
	struct vb_uint_param *p = kp->arg;
	unsigned int n;

	if (kstrtouint(val, 0, &n) || n > vb_ram_mib(0)) {
		pr_err("%s: '%.*s' is not a whole number of MiB from 0 to the guest's %u\n",
		       kp->name, (int)strcspn(val, "\n"), val, vb_ram_mib(0));
		return -EINVAL;
	}
	WRITE_ONCE(p->val, n);
	return 0;
}

static int vb_uint_param_get(char *buf, const struct kernel_param *kp)
{
	struct vb_uint_param *p = kp->arg;

	return sysfs_emit(buf, "%u\n", READ_ONCE(p->val));
}

const struct kernel_param_ops vb_uint_param_ops = {
	.set = vb_uint_param_set,
	.get = vb_uint_param_get,
};

static const struct kernel_param_ops vb_reserve_param_ops = {
	.set = vb_reserve_param_set,
	.get = vb_uint_param_get,
};

static struct vb_uint_param reserve_mib = { .val = 0 };
module_param_cb(reserve_mib, &vb_reserve_param_ops, &reserve_mib, 0444);
MODULE_PARM_DESC(reserve_mib,
		 "MemAvailable (MiB) the balloon always leaves the guest, giving pages back when the guest's own use eats into it (0-guest memory; default 0: only the automatic inflation floor, 1/32 of guest memory and at least 32 MiB, which is also the least a reserve can be)");

struct vb_uint_param max_balloon_pct = {
	.val = 100, .min = 1, .max = 100,
};
module_param_cb(max_balloon_pct, &vb_uint_param_ops, &max_balloon_pct, 0444);
MODULE_PARM_DESC(max_balloon_pct,
		 "Largest balloon as a percentage of guest memory (1-100, default 100)");

static bool inflate = true;
module_param(inflate, bool, 0444);
MODULE_PARM_DESC(inflate,
		 "N: stats-only mode, the host gets statistics but the balloon never inflates (default Y)");

static void vb_config_changed(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&vb->stop_lock, flags);
	if (!vb->stop_update) {
		vb_wake_start(vb, VB_WAKE_ADJUST);
		vb_hint_kick(vb);
	}
	spin_unlock_irqrestore(&vb->stop_lock, flags);
	vb_kick(vb);
}

/*
 * Reset the device, so it holds no buffer any more, and delete the queues;
 * no pointer to them is left behind, the hint queue's cleared under its
 * lock so a shrinker running now does not reap a deleted queue. The hint
 * blocks go back to the guest: a reset device holds none.
 */
static void vb_del_vqs(struct vballoon *vb)
{
	vb_flush_notify(vb);
	vballoon_reset_device(vb->vdev);
	spin_lock(&vb->hint.lock);
	vb->hint.vq = NULL;
	spin_unlock(&vb->hint.lock);
	vb_hint_release(vb, ULONG_MAX);
	vb->vdev->config->del_vqs(vb->vdev);
	vb->inflate_vq = NULL;
	vb->deflate_vq = NULL;
	vb->stats_vq = NULL;
	vb->reporting_vq = NULL;
	vb->vqs_live = false;
}

static int vb_init_vqs(struct vballoon *vb)
{
	vq_callback_t *callbacks[VB_VQ_MAX] = { vb_ack, vb_ack };
	const char *names[VB_VQ_MAX] = { "inflate", "deflate" };
	struct virtqueue *vqs[VB_VQ_MAX] = {};
	unsigned int ring, descs;
	int err;

	if (vb_has(vb, VIRTIO_BALLOON_F_STATS_VQ)) {
		callbacks[VB_VQ_STATS] = vb_stats_request;
		names[VB_VQ_STATS] = "stats";
	}
	/*
	 * The free page queue gets no callback, hence no interrupt vector
	 * and interrupts suppressed: the hint work reaps it by polling, and
	 * a round of thousands of blocks costs no interrupt per block.
	 */
	if (vb_has(vb, VIRTIO_BALLOON_F_FREE_PAGE_HINT))
		names[VB_VQ_HINT] = "free_page_vq";
	if (vb_has(vb, VIRTIO_BALLOON_F_REPORTING)) {
		callbacks[VB_VQ_REPORTING] = vb_report_ack;
		names[VB_VQ_REPORTING] = "reporting_vq";
	}
	err = vballoon_find_vqs(vb->vdev, VB_VQ_MAX, vqs, callbacks, names);
	if (err)
		return err;

	vb->inflate_vq = vqs[VB_VQ_INFLATE];
	vb->deflate_vq = vqs[VB_VQ_DEFLATE];
	ring = min(virtqueue_get_vring_size(vb->inflate_vq),
		   virtqueue_get_vring_size(vb->deflate_vq));
	/*
	 * A buffer is a chain of up to VB_DESCS_PER_BUF descriptors (no
	 * indirect tables, see vb_validate()), and one descriptor stays free
	 * for a migration's one-page buffer where the ring has room for it.
	 */
	descs = clamp(ring - 1, 1U, (unsigned int)VB_DESCS_PER_BUF);
	vb->buf_pfns = descs * VB_PFNS_PER_DESC;
	vb->max_inflight = clamp((ring - 1) / descs, 1U, (unsigned int)VB_BUFS);
	spin_lock(&vb->hint.lock);
	vb->hint.vq = vqs[VB_VQ_HINT];
	spin_unlock(&vb->hint.lock);
	vb->reporting_vq = vqs[VB_VQ_REPORTING];
	vb->stats_vq = NULL;
	vb->vqs_live = true;
	if (vb_has(vb, VIRTIO_BALLOON_F_STATS_VQ)) {
		vb->stats_vq = vqs[VB_VQ_STATS];
		/*
		 * Prime the queue so the host can ask for figures; the kick
		 * waits for DRIVER_OK (vb_device_ready()).
		 */
		err = vb_post_stats(vb, false);
		if (err) {
			vb_del_vqs(vb);
			return err;
		}
	}
	return 0;
}

static int vb_validate(struct virtio_device *vdev)
{
	/*
	 * The device is handed guest-physical page numbers: it must not see
	 * them through an IOMMU.
	 */
	__virtio_clear_bit(vdev, VIRTIO_F_ACCESS_PLATFORM);

	/*
	 * A page report adds up to 32 entries with GFP_NOWAIT while the
	 * pages are held: no indirect table to allocate then.
	 */
	__virtio_clear_bit(vdev, VIRTIO_RING_F_INDIRECT_DESC);

	/*
	 * The hint queue wants no interrupt, but with EVENT_IDX a device
	 * signals its first used buffer after each reset, and QEMU (7.2 and
	 * 10.0 alike) does so from its hinting iothread without its big lock:
	 * on an INTx or virtio-mmio transport that races the vCPUs (x86) or
	 * aborts QEMU (arm64). Vectors are not known yet here; without
	 * EVENT_IDX the no-interrupt flag holds on any transport.
	 */
	if (virtio_has_feature(vdev, VIRTIO_BALLOON_F_FREE_PAGE_HINT))
		__virtio_clear_bit(vdev, VIRTIO_RING_F_EVENT_IDX);

	/*
	 * Nothing to tell the host if freed pages keep no known content. If
	 * they do and the host cannot be told, reporting would let the host
	 * change free pages under the guest's poison checks: go without it.
	 */
	if (!want_init_on_free() && !vballoon_poisoning())
		__virtio_clear_bit(vdev, VIRTIO_BALLOON_F_PAGE_POISON);
	else if (!virtio_has_feature(vdev, VIRTIO_BALLOON_F_PAGE_POISON))
		__virtio_clear_bit(vdev, VIRTIO_BALLOON_F_REPORTING);
	return 0;
}

static void vb_write_poison(struct vballoon *vb)
{
	/* init_on_free leaves freed pages zeroed: poison value 0. */
	u32 poison = 0;

	if (!vb_has(vb, VIRTIO_BALLOON_F_PAGE_POISON))
		return;
	if (!want_init_on_free())
		memset(&poison, PAGE_POISON, sizeof(poison));
	virtio_cwrite_le(vb->vdev, struct virtio_balloon_config, poison_val,
			 &poison);
}

/* DRIVER_OK, then the notifications the spec holds back until it. */
static void vb_device_ready(struct vballoon *vb)
{
	vb_write_poison(vb);
	virtio_device_ready(vb->vdev);
	if (vb->stats_vq)
		virtqueue_kick(vb->stats_vq);
}

/* Give every page back to the guest, tell the host, reset the device. */
static void vb_empty_and_reset(struct vballoon *vb)
{
	/* A failed restore left no queue to give pages back on. */
	if (!vb->vqs_live)
		return;
	while (vb->num_pages) {
		if (!vb_deflate(vb, vb->num_pages))
			/* Pages isolated by migration come back shortly. */
			msleep(20);
	}
	mutex_lock(&vb->lock);
	vb_update_actual(vb);
	mutex_unlock(&vb->lock);
	vb_del_vqs(vb);
}

/*
 * No more work: interrupts queue none, and the work queued or running is
 * waited for. A hint round sees stop_update and ends.
 */
static void vb_stop_updates(struct vballoon *vb)
{
	spin_lock_irq(&vb->stop_lock);
	WRITE_ONCE(vb->stop_update, true);
	spin_unlock_irq(&vb->stop_lock);
	/*
	 * Take back what is queued, then flush what runs. Not the _sync
	 * cancels: before 5.15 their barrier is in no flush, and
	 * destroy_workqueue() could find its worker still holding the queue.
	 */
	cancel_delayed_work(&vb->size_work);
	cancel_work(&vb->stats_work);
	flush_workqueue(vb->wq);
	vb_release_high(vb);
	vb_wake_done(vb, 0);
	if (vb->hint.wq) {
		/* Let a round waiting for room see the end. */
		set_bit(0, &vb->hint.reread);
		wake_up(&vb->acked);
		cancel_work(&vb->hint.work);
		flush_workqueue(vb->hint.wq);
	}
}

/*
 * Stop everything that could still use the device: page reporting, the
 * OOM notifier and every work. Once only: at remove, or first at reboot.
 */
static void vb_quiesce(struct vballoon *vb)
{
	if (vb->quiesced)
		return;
	vb->quiesced = true;
	vb_reporting_exit(vb);
	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM))
		unregister_oom_notifier(&vb->oom_nb);
	vb_stop_updates(vb);
}

/*
 * Reboot, power off and kexec run the reboot notifiers before the devices'
 * shutdown, where the virtio bus may break and reset the device: a work
 * still adding buffers then would find the queues broken.
 */
static int vb_reboot_notify(struct notifier_block *nb, unsigned long action,
			    void *unused)
{
	struct vballoon *vb = container_of(nb, struct vballoon, reboot_nb);

	vb_quiesce(vb);
	return NOTIFY_DONE;
}

static int vb_probe(struct virtio_device *vdev)
{
	struct vballoon *vb;
	unsigned int i;
	int err;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "config space is not readable\n");
		return -EINVAL;
	}

	vb = kzalloc(sizeof(*vb), GFP_KERNEL);
	if (!vb)
		return -ENOMEM;
	vb->bufs = kcalloc(VB_BUFS, sizeof(*vb->bufs), GFP_KERNEL);
	if (!vb->bufs) {
		err = -ENOMEM;
		goto err_free_vb;
	}
	for (i = 0; i < VB_BUFS; i++)
		INIT_LIST_HEAD(&vb->bufs[i].pages);
	vb->free_bufs = GENMASK(VB_BUFS - 1, 0);
	/*
	 * The size work gives pages back to a guest short of memory: a rescuer
	 * runs it when no worker can be forked. The device's own queue, so
	 * vb_stop_updates() can flush it whole, frozen or not.
	 */
	vb->wq = alloc_workqueue("vballoon-%s", WQ_FREEZABLE | WQ_MEM_RECLAIM |
				 VBALLOON_WQ_PERCPU, 0, dev_name(&vdev->dev));
	if (!vb->wq) {
		err = -ENOMEM;
		goto err_free_vb;
	}
	spin_lock_init(&vb->high_lock);
	INIT_LIST_HEAD(&vb->high);
	spin_lock_init(&vb->wake_lock);
	spin_lock_init(&vb->hint.lock);
	INIT_LIST_HEAD(&vb->hint.blocks);
	vdev->priv = vb;
	vb->vdev = vdev;
	mutex_init(&vb->lock);
	init_waitqueue_head(&vb->acked);
	spin_lock_init(&vb->stop_lock);
	INIT_DELAYED_WORK(&vb->size_work, vb_size_work);
	INIT_DELAYED_WORK(&vb->notify_work, vb_notify_work);
	INIT_WORK(&vb->stats_work, vb_stats_work);
	vb->floor_pages = vb_default_floor();
	vb->reserve_mib = READ_ONCE(reserve_mib.val);
	vb->max_pct = READ_ONCE(max_balloon_pct.val);
	vb->inflate = READ_ONCE(inflate);
	vb->backoff_ms = VB_BACKOFF_MIN_MS;
	vb->retry_at = jiffies;
	vb->pressure_window = jiffies;
	ratelimit_state_init(&vb->fail_rs, 30 * HZ, 1);
	ratelimit_set_flags(&vb->fail_rs, RATELIMIT_MSG_ON_RELEASE);

	vb->pages = vballoon_pages_create(vb_migrate, vb,
					  !vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM));
	if (IS_ERR(vb->pages)) {
		err = PTR_ERR(vb->pages);
		goto err_destroy_wq;
	}
	err = vb_init_vqs(vb);
	if (err)
		goto err_destroy_pages;
	err = vb_hint_init(vb);
	if (err)
		goto err_del_vqs;

	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM)) {
		vb->oom_nb.notifier_call = vb_oom_notify;
		vb->oom_nb.priority = 80;
		err = register_oom_notifier(&vb->oom_nb);
		if (err)
			goto err_hint_exit;
	}
	/*
	 * The balloon cannot wake the guest, but its wakeup source keeps an
	 * adjustment from being cut by autosleep (vb_wake_start()); its own,
	 * as wakeup sources do not nest, so the transport's stays apart.
	 */
	device_set_wakeup_capable(&vdev->dev, true);
	vb_device_ready(vb);

	err = vb_reporting_init(vb);
	if (err)
		goto err_stop;
	vb->reboot_nb.notifier_call = vb_reboot_notify;
	err = register_reboot_notifier(&vb->reboot_nb);
	if (err)
		goto err_reporting_exit;
	vb_debugfs_add(vb);

	vb_config_changed(vdev);
	return 0;

err_reporting_exit:
	vb_reporting_exit(vb);
err_stop:
	/*
	 * The device is live: an interrupt may have queued work, and that
	 * work may have inflated. Stop it and give every page back.
	 */
	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM))
		unregister_oom_notifier(&vb->oom_nb);
	vb_stop_updates(vb);
	vb_empty_and_reset(vb);
	vb_hint_exit(vb);
	goto err_destroy_pages;
err_hint_exit:
	vb_hint_exit(vb);
err_del_vqs:
	vb_del_vqs(vb);
err_destroy_pages:
	vballoon_pages_destroy(vb->pages);
err_destroy_wq:
	destroy_workqueue(vb->wq);
err_free_vb:
	kfree(vb->bufs);
	kfree(vb);
	return err;
}

static void vb_remove(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;

	unregister_reboot_notifier(&vb->reboot_nb);
	debugfs_remove(vb->debugfs);
	debugfs_remove(vb->debugfs_delay);
	vb_quiesce(vb);
	vb_empty_and_reset(vb);
	vb_hint_exit(vb);
	vballoon_pages_destroy(vb->pages);
	destroy_workqueue(vb->wq);
	kfree(vb->bufs);
	kfree(vb);
}

#ifdef VB_HAVE_DRIVER_SHUTDOWN
/*
 * Where the bus lets a driver stop the device itself at shutdown: quiesce
 * (done already if a reboot notifier ran), then break and reset it as the
 * bus would. The balloon is not emptied; the guest's memory goes with it.
 */
static void vb_shutdown(struct virtio_device *vdev)
{
	vb_quiesce(vdev->priv);
	virtio_device_shutdown(vdev);
}
#endif

#ifdef CONFIG_PM_SLEEP
static int vb_freeze(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;

	/*
	 * The freezable workqueues are frozen, but work may be queued:
	 * cancel it, and let none run on the queues deleted here until a
	 * restore succeeds. Empty the balloon so a restored guest starts
	 * from what the host wants then.
	 */
	vb_stop_updates(vb);
	vb_reporting_exit(vb);
	vb_empty_and_reset(vb);
	return 0;
}

static int vb_restore(struct virtio_device *vdev)
{
	struct vballoon *vb = vdev->priv;
	int err;

	err = vb_init_vqs(vb);
	if (err)
		return err;
	vb_device_ready(vb);
	err = vb_reporting_init(vb);
	if (err) {
		vb_del_vqs(vb);
		return err;
	}
	spin_lock_irq(&vb->stop_lock);
	WRITE_ONCE(vb->stop_update, false);
	spin_unlock_irq(&vb->stop_lock);
	/* A stats request that came before this queued no work: look. */
	if (vb->stats_vq)
		queue_work(vb->wq, &vb->stats_work);
	vb_config_changed(vdev);
	return 0;
}
#endif

static const struct virtio_device_id vb_id_table[] = {
	{ VIRTIO_ID_BALLOON, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vb_id_table);

static unsigned int vb_features[] = {
	VIRTIO_BALLOON_F_MUST_TELL_HOST,
	VIRTIO_BALLOON_F_STATS_VQ,
	VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
	VIRTIO_BALLOON_F_FREE_PAGE_HINT,
	VIRTIO_BALLOON_F_PAGE_POISON,
	VIRTIO_BALLOON_F_REPORTING,
};

static struct virtio_driver vb_driver = {
	.feature_table = vb_features,
	.feature_table_size = ARRAY_SIZE(vb_features),
	.driver.name = KBUILD_MODNAME,
	/* v6.1's register_virtio_driver() does not set it for us. */
	.driver.owner = THIS_MODULE,
	/* Added once probe succeeded, removed before remove runs. */
	.driver.dev_groups = vb_attr_groups,
	.id_table = vb_id_table,
	.validate = vb_validate,
	.probe = vb_probe,
	.remove = vb_remove,
	.config_changed = vb_config_changed,
#ifdef VB_HAVE_DRIVER_SHUTDOWN
	.shutdown = vb_shutdown,
#endif
#ifdef CONFIG_PM_SLEEP
	.freeze = vb_freeze,
	.restore = vb_restore,
#endif
};

static int __init vb_init(void)
{
	int err;

	pr_info("version %s, balloon pages migrate through the %s\n",
		VBALLOON_VERSION, vballoon_pages_scheme());
	vballoon_compat_report();
	vb_debugfs_root = debugfs_create_dir(KBUILD_MODNAME, NULL);
	err = register_virtio_driver(&vb_driver);
	if (err)
		debugfs_remove_recursive(vb_debugfs_root);
	return err;
}
module_init(vb_init);

static void __exit vb_exit(void)
{
	unregister_virtio_driver(&vb_driver);
	debugfs_remove_recursive(vb_debugfs_root);
}
module_exit(vb_exit);

MODULE_DESCRIPTION("Virtio memory balloon driver (vballoon)");
MODULE_LICENSE("GPL");
MODULE_VERSION(VBALLOON_VERSION);
