// SPDX-License-Identifier: GPL-2.0
/*
 * Out-of-line wrappers for static inline functions and macros of the kernel,
 * called from the Rust side of dm-ferry.  No logic lives here.
 */
#include <linux/bio.h>
#include <linux/fs.h>
#include <linux/module.h>
#include <linux/blkdev.h>
#include <linux/highmem.h>
#include <linux/poll.h>
#include <linux/random.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "helpers.h"

void ferry_bio_set_dev(struct bio *bio, struct block_device *bdev)
{
	bio_set_dev(bio, bdev);
}

sector_t ferry_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

unsigned int ferry_bdev_logical_block_size(struct block_device *bdev)
{
	return bdev_logical_block_size(bdev);
}

dev_t ferry_bdev_devt(struct block_device *bdev)
{
	return bdev->bd_dev;
}

bool ferry_bio_next_segment(struct bio *bio, struct bvec_iter *iter, struct bio_vec *bv)
{
	if (!iter->bi_size)
		return false;
	*bv = bio_iter_iovec(bio, *iter);
	bio_advance_iter_single(bio, iter, bv->bv_len);
	return true;
}

void *ferry_kmap_local_page(struct page *page)
{
	return kmap_local_page(page);
}

void ferry_kunmap_local(void *addr)
{
	kunmap_local(addr);
}

/* As the kernel crate's __spin_lock_init helper: the caller's name and
 * lockdep class, one per lock (a spin_lock_init() here would give every
 * lock of the module the one class of this call site). */
void ferry_spin_lock_init(spinlock_t *lock, const char *name, struct lock_class_key *key)
{
#ifdef CONFIG_DEBUG_SPINLOCK
# if defined(CONFIG_PREEMPT_RT)
	__spin_lock_init(lock, name, key, false);
# else
	__raw_spin_lock_init(spinlock_check(lock), name, key, LD_WAIT_CONFIG);
# endif
#else
	spin_lock_init(lock);
#endif
}

unsigned long ferry_spin_lock_irqsave(spinlock_t *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void ferry_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

void ferry_init_waitqueue_head(struct wait_queue_head *wq, const char *name, struct lock_class_key *key)
{
	__init_waitqueue_head(wq, name, key);
}

/*
 * Wakes every waiter, if there is one: a write's completion calls this for
 * the reader, which is most often not asleep, and wq_has_sleeper() spares
 * the queue's lock then.  Its barrier pairs with the one a waiter sets
 * before it tests its condition (prepare_to_wait_event, poll_wait), and the
 * waker changed the condition before calling.
 */
void ferry_wake_up_all(struct wait_queue_head *wq)
{
	if (wq_has_sleeper(wq))
		wake_up_all(wq);
}

void ferry_poll_wait(struct file *file, struct wait_queue_head *wq, struct poll_table_struct *pt)
{
	poll_wait(file, wq, pt);
}

int ferry_wait_event_interruptible(struct wait_queue_head *wq, bool (*cond)(const void *), const void *arg)
{
	return wait_event_interruptible(*wq, cond(arg));
}

void ferry_wait_event(struct wait_queue_head *wq, bool (*cond)(const void *), const void *arg)
{
	wait_event(*wq, cond(arg));
}

void ferry_init_delayed_work(struct delayed_work *dwork, void (*fn)(struct work_struct *))
{
	INIT_DELAYED_WORK(dwork, fn);
}

struct workqueue_struct *ferry_alloc_workqueue(void)
{
	return alloc_workqueue("ferry", WQ_MEM_RECLAIM, 0);
}

bool ferry_queue_delayed_work(struct workqueue_struct *wq, struct delayed_work *dwork, unsigned long delay)
{
	return queue_delayed_work(wq, dwork, delay);
}

struct delayed_work *ferry_to_delayed_work(struct work_struct *work)
{
	return to_delayed_work(work);
}

unsigned int ferry_memalloc_noio_save(void)
{
	return memalloc_noio_save();
}

void ferry_memalloc_noio_restore(unsigned int flags)
{
	memalloc_noio_restore(flags);
}

const unsigned int ferry_pollin = (__force unsigned int)(EPOLLIN | EPOLLRDNORM);
const unsigned int ferry_pollout = (__force unsigned int)(EPOLLOUT | EPOLLWRNORM);
const gfp_t ferry_gfp_noio = GFP_NOIO;

void ferry_bio_wouldblock_error(struct bio *bio)
{
	bio_wouldblock_error(bio);
}

void ferry_bio_io_error(struct bio *bio)
{
	bio_io_error(bio);
}

/* A write to a secondary: refused, "Operation not supported". */
void ferry_bio_refuse(struct bio *bio)
{
	bio->bi_status = BLK_STS_NOTSUPP;
	bio_endio(bio);
}

/* The module's own bio set: zeroed (bioset_exit checks what
 * bioset_init set up), with a pool of `pool` bios and bio vectors. */
struct bio_set *ferry_bioset_create(unsigned int pool)
{
	struct bio_set *bs = kzalloc(sizeof(*bs), GFP_KERNEL);

	if (bs && bioset_init(bs, pool, 0, BIOSET_NEED_BVECS)) {
		bioset_exit(bs);
		kfree(bs);
		bs = NULL;
	}
	return bs;
}

void ferry_bioset_destroy(struct bio_set *bs)
{
	bioset_exit(bs);
	kfree(bs);
}

int ferry_blkdev_flush(struct block_device *bdev)
{
	return blkdev_issue_flush(bdev);
}

int ferry_blkdev_zeroout(struct block_device *bdev, sector_t sector, sector_t nr)
{
	return blkdev_issue_zeroout(bdev, sector, nr, GFP_NOIO, 0);
}

/* A discard the device does not support is not an error: its content is
 * undefined after a discard anyway. */
int ferry_blkdev_discard(struct block_device *bdev, sector_t sector, sector_t nr)
{
	int r;

	if (!bdev_max_discard_sectors(bdev))
		return 0;
	r = blkdev_issue_discard(bdev, sector, nr, GFP_NOIO);
	return r == -EOPNOTSUPP ? 0 : r;
}

void ferry_get_random_bytes(void *buf, size_t len)
{
	get_random_bytes(buf, len);
}

/*
 * The character device /dev/ferry/<group>: a file_operations table whose
 * functions are implemented in Rust (chardev.rs).  THIS_MODULE pins the
 * module while a file is open.
 */
int ferry_chardev_open(struct inode *inode, struct file *file);
int ferry_chardev_release(struct inode *inode, struct file *file);
ssize_t ferry_chardev_read(struct file *file, char __user *buf, size_t len, loff_t *ppos);
ssize_t ferry_chardev_write(struct file *file, const char __user *buf, size_t len, loff_t *ppos);
__poll_t ferry_chardev_poll(struct file *file, struct poll_table_struct *pt);

const struct file_operations ferry_chardev_fops = {
	.owner = THIS_MODULE,
	.open = ferry_chardev_open,
	.release = ferry_chardev_release,
	.read = ferry_chardev_read,
	.write = ferry_chardev_write,
	.poll = ferry_chardev_poll,
	.llseek = noop_llseek,
};
