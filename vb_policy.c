// SPDX-License-Identifier: GPL-2.0
/*
 * How big the balloon may be: the host's target against the guest's
 * floor, reserve and ceiling, the size work that moves the balloon
 * towards it, the backoff and the wakeup source held meanwhile. Every
 * reading of mm internals the floor needs is here.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include "vb.h"
#include "vballoon_trace.h"

/* Guest pages the balloon holds. */
unsigned long vb_held_pages(struct vballoon *vb)
{
	return READ_ONCE(vb->num_pages) / VB_UNITS_PER_PAGE;
}

/* Guest memory, balloon included, in guest pages. */
static unsigned long vb_ram_pages(struct vballoon *vb)
{
	if (vb_has(vb, VIRTIO_BALLOON_F_DEFLATE_ON_OOM))
		return totalram_pages();
	return totalram_pages() + vb_held_pages(vb);
}

/*
 * The floor: MemAvailable the balloon always leaves the guest, in guest
 * pages. The automatic floor, or the administrator's reserve if higher.
 */
unsigned long vb_floor(struct vballoon *vb)
{
	return max(vb->floor_pages,
		   (unsigned long)READ_ONCE(vb->reserve_mib) <<
		   (20 - PAGE_SHIFT));
}

/*
 * Inflation stops this far above the floor, and a guest that falls below
 * the floor gets pages back until it is half that far above it again, so
 * the two never take turns on the same pages.
 */
unsigned long vb_slack(unsigned long floor)
{
	return max(floor / 8, 4UL << (20 - PAGE_SHIFT));
}

/* Pages the kernel holds back above the watermarks after fragmentation. */
unsigned long vb_boost_pages(void)
{
	unsigned long boost = 0;
	int nid, i;

	for_each_online_node(nid) {
		struct pglist_data *pgdat = NODE_DATA(nid);

		for (i = 0; i < MAX_NR_ZONES; i++)
			boost += READ_ONCE(pgdat->node_zones[i].watermark_boost);
	}
	return boost;
}

/*
 * MemAvailable as the floor counts it. si_mem_available() keeps back the
 * high watermarks but not a watermark boost: after an allocation that
 * fragmented a zone, the kernel raises all its watermarks by up to 1.5
 * times the high one until kswapd has reclaimed that much. A balloon that
 * took the boost would leave the guest's own tasks below their raised min
 * watermark, to the OOM killer, with free memory still in the buddy lists.
 */
static long vb_available(struct vballoon *vb)
{
	/*
	 * Pages held by vb_hold_high() count as taken: an inflate finding
	 * free memory only above 16 TiB stops at the floor, and gives them
	 * back when the pass ends without room (vb_size_work()).
	 */
	long avail = si_mem_available();

	/*
	 * A boost grows a pageblock at a time, which with 16 KiB pages is
	 * more than a small guest's slack: counted there, it would stop the
	 * balloon short of what the guest can spare. Only where it fits.
	 */
	if (pageblock_nr_pages <= vb_slack(vb_floor(vb)))
		avail -= (long)vb_boost_pages();
	return avail;
}

/*
 * Pages the balloon may still take before MemAvailable reaches its stop
 * line; 0 at or under it. With a reserve the line is the floor plus the
 * slack, so that the reserve's give-back (vb_shortfall()) and inflation
 * never take turns on the same pages; without one nothing gives pages
 * back, and the line is the floor itself.
 */
unsigned long vb_room(struct vballoon *vb)
{
	unsigned long floor = vb_floor(vb);
	unsigned long stop = floor;
	long avail = vb_available(vb);

	if (READ_ONCE(vb->reserve_mib))
		stop += vb_slack(floor);
	return avail > 0 && (unsigned long)avail > stop ? avail - stop : 0;
}

/* The size work clears the flag once the time is up, before jiffies wrap. */
static bool vb_under_pressure(struct vballoon *vb)
{
	return READ_ONCE(vb->pressure) &&
	       time_before(jiffies, READ_ONCE(vb->pressure_until));
}

/*
 * Guest pages to give back so the guest holds its floor again, or 0. With
 * a reserve set; or under pressure (vb_pressure()), when the line is twice
 * the floor. Otherwise, as with the in-tree driver, the guest's own use
 * takes pages back only through the OOM notifier.
 */
static unsigned long vb_shortfall(struct vballoon *vb)
{
	unsigned long floor = vb_floor(vb);
	unsigned long line, fill;
	long avail;

	if (vb_under_pressure(vb)) {
		line = 2 * floor;
		fill = line;
	} else if (READ_ONCE(vb->reserve_mib)) {
		line = floor;
		fill = floor + vb_slack(floor) / 2;
	} else {
		return 0;
	}
	avail = vb_available(vb);
	if (avail >= 0 && (unsigned long)avail >= line)
		return 0;
	return fill - max(avail, 0L);
}

/* The most the balloon may hold, in 4 KiB units: inflate, max_balloon_pct. */
unsigned int vb_ceiling(struct vballoon *vb)
{
	u64 units = (u64)vb_ram_pages(vb) * VB_UNITS_PER_PAGE;

	if (!READ_ONCE(vb->inflate))
		return 0;
	units = div_u64(units * READ_ONCE(vb->max_pct), 100);
	return min_t(u64, ALIGN_DOWN(units, VB_UNITS_PER_PAGE), U32_MAX);
}

/*
 * Pages to take from this CPU's per-CPU free lists first, when taking
 * @over more pages than the room left would cross the stop line: up to
 * their surplus (vballoon_pcp_surplus(), memory MemAvailable does not
 * count that the lists give back within seconds), so the balloon ends
 * where it would have ended without waiting for them. The caller still
 * checks the stop line before every batch. A task that keeps freeing on
 * this CPU keeps its lists full and refills them from the buddy lists
 * after the balloon took from them: at most half the floor per target is
 * taken this way, so even then the guest keeps half its floor.
 */
unsigned long vb_pcp_first(struct vballoon *vb, unsigned long over)
{
	unsigned long cap = vb_floor(vb) / 2;

	if (vb->pcp_taken >= cap)
		return 0;
	return min3(over, cap - vb->pcp_taken, vballoon_pcp_surplus());
}

/*
 * The host's target in 4 KiB units, rounded up to whole guest pages. With
 * 16 or 64 KiB pages a target near 2^32 would round past U32_MAX to 0:
 * such a target gets the most whole pages that fit.
 */
unsigned int vb_target(struct vballoon *vb)
{
	u32 num_pages;

	/* Balloon config space is little-endian even on legacy devices. */
	virtio_cread_le(vb->vdev, struct virtio_balloon_config, num_pages,
			&num_pages);
	return min_t(u64, ALIGN((u64)num_pages, VB_UNITS_PER_PAGE),
		     ALIGN_DOWN(U32_MAX, VB_UNITS_PER_PAGE));
}

/*
 * As the in-tree driver (v6.12): from the interrupt that asks for an
 * adjustment or statistics to the end of the work that answers it, the
 * device's wakeup source is held, so an autosleeping guest does not
 * suspend in between. It exists once user space enables power/wakeup.
 */
void vb_wake_start(struct vballoon *vb, unsigned int what)
{
	unsigned long flags;

	spin_lock_irqsave(&vb->wake_lock, flags);
	vb->wake_pending |= what;
	if (!vb->waking) {
		vb->waking = true;
		pm_stay_awake(&vb->vdev->dev);
	}
	spin_unlock_irqrestore(&vb->wake_lock, flags);
}

/* A work begins: what it was asked for so far is its to answer. */
void vb_wake_take(struct vballoon *vb, unsigned int what)
{
	spin_lock_irq(&vb->wake_lock);
	vb->wake_pending &= ~what;
	vb->wake_busy |= what;
	spin_unlock_irq(&vb->wake_lock);
}

/* A work is done (@what 0: every work is stopped): relax if none is due. */
void vb_wake_done(struct vballoon *vb, unsigned int what)
{
	spin_lock_irq(&vb->wake_lock);
	if (!what)
		vb->wake_pending = 0;
	vb->wake_busy &= what ? ~what : 0;
	if (vb->waking && !vb->wake_pending && !vb->wake_busy) {
		vb->waking = false;
		pm_relax(&vb->vdev->dev);
	}
	spin_unlock_irq(&vb->wake_lock);
}

/*
 * Run the size work after @delay. With @sooner an earlier run already
 * queued stays as it is (the work itself re-arming, or a periodic check);
 * otherwise the new delay replaces it (the host or the admin changed
 * something).
 */
static void vb_queue_size_work(struct vballoon *vb, unsigned long delay,
			       bool sooner)
{
	unsigned long flags;

	spin_lock_irqsave(&vb->stop_lock, flags);
	if (!vb->stop_update) {
		if (sooner)
			queue_delayed_work(vb->wq, &vb->size_work,
					   delay);
		else
			mod_delayed_work(vb->wq, &vb->size_work,
					 delay);
	}
	spin_unlock_irqrestore(&vb->stop_lock, flags);
}

/* Something changed (target, policy): act now, forget the backoff. */
void vb_kick(struct vballoon *vb)
{
	WRITE_ONCE(vb->backoff_ms, VB_BACKOFF_MIN_MS);
	WRITE_ONCE(vb->retry_at, jiffies);
	vb_queue_size_work(vb, 0, false);
}

static void vb_pressure_renew(struct vballoon *vb)
{
	WRITE_ONCE(vb->pressure_until,
		   jiffies + msecs_to_jiffies(VB_PRESSURE_MS));
	WRITE_ONCE(vb->pressure, true);
}

/*
 * The OOM notifier gave back oom_pages: the guest is short now. A task
 * that keeps allocating would meet the OOM path again every oom_pages;
 * for VB_PRESSURE_MS instead, renewed while the guest keeps eating into
 * it, the size work tops MemAvailable up to twice the floor in whole
 * passes (vb_hold_floor()). Only with DEFLATE_ON_OOM: the host agreed
 * to give pages back.
 */
void vb_pressure(struct vballoon *vb)
{
	vb_pressure_renew(vb);
	vb_queue_size_work(vb, 0, false);
}

/*
 * The balloon holds less than the host asked for: count the target once,
 * and say why now and then.
 */
static void vb_refuse(struct vballoon *vb, unsigned int target,
		      unsigned int goal)
{
	unsigned long retry_at = READ_ONCE(vb->retry_at);
	unsigned long floor = vb_floor(vb);

	if (!vb->refused || vb->refused_target != target) {
		vb->refused = true;
		vb->refused_target = target;
		atomic64_inc(&vb->cnt[VB_CNT_REFUSALS]);
	}
	if (!__ratelimit(&vb->fail_rs))
		return;
	if (!READ_ONCE(vb->inflate))
		dev_info(&vb->vdev->dev,
			 "target %llu KiB not reached: holding %llu KiB, stats-only mode (inflate=0)\n",
			 (u64)target << 2, (u64)READ_ONCE(vb->num_pages) << 2);
	else if (vb_under_pressure(vb))
		dev_info(&vb->vdev->dev,
			 "target %llu KiB not reached: holding %llu KiB, the guest is short of memory (deflate on OOM)\n",
			 (u64)target << 2, (u64)READ_ONCE(vb->num_pages) << 2);
	else if (goal < target && READ_ONCE(vb->num_pages) >= goal)
		dev_info(&vb->vdev->dev,
			 "target %llu KiB not reached: holding %llu KiB, at most %u%% of guest memory (max_balloon_pct)\n",
			 (u64)target << 2, (u64)READ_ONCE(vb->num_pages) << 2,
			 READ_ONCE(vb->max_pct));
	else
		dev_info(&vb->vdev->dev,
			 "target %llu KiB not reached: holding %llu KiB, guest keeps %lu KiB available; retrying in %u ms\n",
			 (u64)target << 2, (u64)READ_ONCE(vb->num_pages) << 2,
			 floor << (PAGE_SHIFT - 10),
			 time_after(retry_at, jiffies) ?
			 jiffies_to_msecs(retry_at - jiffies) : 0);
}

/*
 * The guest could not give what the host asked for: look again later
 * rather than spin. The wait doubles each time nothing could be taken and
 * starts over when the host sets a new target.
 */
static void vb_back_off(struct vballoon *vb)
{
	unsigned int wait = READ_ONCE(vb->backoff_ms);

	WRITE_ONCE(vb->retry_at, jiffies + msecs_to_jiffies(wait));
	WRITE_ONCE(vb->backoff_ms, min(wait * 2, VB_BACKOFF_MAX_MS));
}

/*
 * The guest's own use ate into its floor, or into twice the floor under
 * pressure: give pages back. Pressure lasts while the guest takes them,
 * and gives at most the floor per VB_PRESSURE_MS: memory the host did
 * not hand out grows by no more than that between two of its looks.
 */
static unsigned int vb_hold_floor(struct vballoon *vb, unsigned long short_pages)
{
	unsigned int units = min_t(unsigned long,
				   short_pages * VB_UNITS_PER_PAGE,
				   READ_ONCE(vb->num_pages));
	bool pressure = vb_under_pressure(vb);
	long avail = vb_available(vb);
	unsigned int done;

	if (pressure) {
		if (time_after_eq(jiffies, vb->pressure_window)) {
			vb->pressure_window = jiffies +
				msecs_to_jiffies(VB_PRESSURE_MS);
			vb->pressure_left = vb_floor(vb);
		}
		units = min_t(unsigned long, units,
			      vb->pressure_left * VB_UNITS_PER_PAGE);
	}
	/* Pressure's share for this second is spent: wait for the next. */
	if (!units)
		return 0;
	done = vb_deflate(vb, units);
	if (pressure)
		vb->pressure_left -= done / VB_UNITS_PER_PAGE;
	atomic64_add(done / VB_UNITS_PER_PAGE,
		     &vb->cnt[pressure ? VB_CNT_PRESSURE_DEFLATED_PAGES :
			      VB_CNT_RESERVE_DEFLATED_PAGES]);
	trace_vballoon_reserve_deflate(done / VB_UNITS_PER_PAGE,
				       max(avail, 0L), vb_floor(vb));
	if (pressure && done)
		vb_pressure_renew(vb);
	return done;
}

/*
 * When a size work that stopped should look again, in jiffies; 0: only
 * when the host or the administrator changes something. A goal above
 * the balloon is retried when the backoff ends; one below it (pages held
 * by migration) soon; a reserve is checked every VB_GUARD_MS, a guest
 * under pressure every VB_PRESSURE_POLL_MS.
 */
static unsigned long vb_next_run(struct vballoon *vb, unsigned int goal,
				 unsigned int held)
{
	unsigned long retry_at = READ_ONCE(vb->retry_at);
	unsigned long next = 0;

	if (goal > held)
		next = time_after(retry_at, jiffies) ? retry_at - jiffies : 1;
	else if (goal < held)
		next = 1;
	if (held && READ_ONCE(vb->reserve_mib))
		next = min_not_zero(next, msecs_to_jiffies(VB_GUARD_MS));
	if (held && vb_under_pressure(vb))
		next = min_not_zero(next, msecs_to_jiffies(VB_PRESSURE_POLL_MS));
	return next;
}

/*
 * One inflate pass, unless a backoff is running. Return: true if it made
 * progress (pages added, or pages above 16 TiB set aside so the next pass
 * finds nameable memory) and the goal is not reached yet; false when the
 * guest could spare nothing, which starts or lengthens the backoff.
 */
static bool vb_try_inflate(struct vballoon *vb, unsigned int goal)
{
	unsigned int held = READ_ONCE(vb->num_pages);
	unsigned long high = READ_ONCE(vb->nr_high);
	unsigned int added;

	if (time_before(jiffies, READ_ONCE(vb->retry_at)))
		return false;
	added = vb_inflate(vb, goal - held);
	if (added || READ_ONCE(vb->nr_high) > high) {
		WRITE_ONCE(vb->backoff_ms, VB_BACKOFF_MIN_MS);
		return READ_ONCE(vb->num_pages) < goal;
	}
	vb_back_off(vb);
	return false;
}

/*
 * Move the balloon one step towards the target. A run does one of:
 * deflate for a pass towards a target above the balloon, give pages back
 * to a guest below its reserve (then back off) or under pressure (no
 * inflation until it ends), or inflate for a pass (vb_try_inflate()).
 * While it moves it requeues at once; once it stops it relaxes the
 * wakeup source, says why a target is not met, and looks again when
 * there is a reason (vb_next_run()). Only this work inflates.
 */
void vb_size_work(struct work_struct *work)
{
	struct vballoon *vb = container_of(to_delayed_work(work),
					   struct vballoon, size_work);
	unsigned int target = vb_target(vb);
	unsigned int goal = min(target, vb_ceiling(vb));
	unsigned int held = READ_ONCE(vb->num_pages);
	unsigned long short_pages = held ? vb_shortfall(vb) : 0;
	bool moved = false, inflating = false;
	unsigned long next;

	vb_wake_take(vb, VB_WAKE_ADJUST);
	if (READ_ONCE(vb->pressure) && !vb_under_pressure(vb)) {
		WRITE_ONCE(vb->pressure, false);
		vb->pressure_window = jiffies;
	}
	if (target != vb->last_target) {
		WRITE_ONCE(vb->prev_target, vb->last_target);
		WRITE_ONCE(vb->last_target, target);
		WRITE_ONCE(vb->last_target_ms, vb_now_ms());
		WRITE_ONCE(vb->pcp_taken, 0);
		trace_vballoon_target(target, held, goal);
	}

	/* What the host gives back comes first, at full speed. */
	if (goal < held) {
		moved = vb_deflate(vb, held - goal) != 0;
	} else if (short_pages) {
		/* Pressure holds inflation off itself, and ends on its own. */
		if (!vb_under_pressure(vb))
			vb_back_off(vb);
		moved = vb_hold_floor(vb, short_pages) != 0;
	} else if (goal > held && !vb_under_pressure(vb)) {
		inflating = vb_try_inflate(vb, goal);
	}
	/* Pages held above 16 TiB are kept only while an inflate goes on. */
	if (!inflating)
		vb_release_high(vb);
	if (moved || inflating) {
		vb_queue_size_work(vb, 0, true);
		return;
	}

	held = READ_ONCE(vb->num_pages);
	if (held < target)
		vb_refuse(vb, target, goal);
	else if (held == target)
		vb->refused = false;
	vb_wake_done(vb, VB_WAKE_ADJUST);
	next = vb_next_run(vb, goal, held);
	if (next)
		vb_queue_size_work(vb, next, true);
}

/*
 * The smallest MemAvailable the balloon leaves the guest: 1/32 of its
 * memory, at least 32 MiB (the tail of Hyper-V's balloon floor). Below it
 * a guest holding unreclaimable memory (tmpfs, no swap) is at the OOM
 * killer's mercy, and a guest with nothing left to kill panics.
 */
unsigned long vb_default_floor(void)
{
	unsigned long total = totalram_pages();

	return max(total / 32, 32UL << (20 - PAGE_SHIFT));
}
