/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Out-of-line wrappers for static inline functions and macros of the kernel
 * that bindgen cannot bind.  Each one is a single call or field access; see
 * helpers.c.
 */
#ifndef FERRY_HELPERS_H
#define FERRY_HELPERS_H

#include <linux/types.h>

struct bio;
struct bio_vec;
struct bvec_iter;
struct block_device;
struct delayed_work;
struct file;
struct file_operations;
struct page;
struct poll_table_struct;
struct wait_queue_head;
struct work_struct;
#include <linux/spinlock_types.h>

void ferry_bio_set_dev(struct bio *bio, struct block_device *bdev);
sector_t ferry_bdev_nr_sectors(struct block_device *bdev);
unsigned int ferry_bdev_logical_block_size(struct block_device *bdev);
dev_t ferry_bdev_devt(struct block_device *bdev);

void ferry_bio_wouldblock_error(struct bio *bio);
void ferry_bio_io_error(struct bio *bio);
void ferry_get_random_bytes(void *buf, size_t len);

/* Single-page segments of a bio, as bio_for_each_segment() walks them. */
bool ferry_bio_next_segment(struct bio *bio, struct bvec_iter *iter, struct bio_vec *bv);
void *ferry_kmap_local_page(struct page *page);
void ferry_kunmap_local(void *addr);

/* Interrupt-safe spinlocks. */
void ferry_spin_lock_init(spinlock_t *lock, const char *name, struct lock_class_key *key);
unsigned long ferry_spin_lock_irqsave(spinlock_t *lock);
void ferry_spin_unlock_irqrestore(spinlock_t *lock, unsigned long flags);

/* Wait queues. */
void ferry_init_waitqueue_head(struct wait_queue_head *wq, const char *name, struct lock_class_key *key);
void ferry_wake_up_all(struct wait_queue_head *wq);
void ferry_poll_wait(struct file *file, struct wait_queue_head *wq, struct poll_table_struct *pt);
int ferry_wait_event_interruptible(struct wait_queue_head *wq, bool (*cond)(const void *), const void *arg);
void ferry_wait_event(struct wait_queue_head *wq, bool (*cond)(const void *), const void *arg);

/* Delayed work on the module's own workqueue (WQ_MEM_RECLAIM: it carries
 * writes). */
struct workqueue_struct;
void ferry_init_delayed_work(struct delayed_work *dwork, void (*fn)(struct work_struct *));
struct workqueue_struct *ferry_alloc_workqueue(void);
bool ferry_queue_delayed_work(struct workqueue_struct *wq, struct delayed_work *dwork, unsigned long delay);
struct delayed_work *ferry_to_delayed_work(struct work_struct *work);
/* A scope in which allocations do no I/O (GFP_NOIO), for the work that
 * submits deferred writes. */
unsigned int ferry_memalloc_noio_save(void);
void ferry_memalloc_noio_restore(unsigned int flags);

/* Secondary mode: refuse a host write; apply records synchronously. */
void ferry_bio_refuse(struct bio *bio);
struct bio_set *ferry_bioset_create(unsigned int pool);
void ferry_bioset_destroy(struct bio_set *bs);
int ferry_blkdev_flush(struct block_device *bdev);
int ferry_blkdev_zeroout(struct block_device *bdev, sector_t sector, sector_t nr);
int ferry_blkdev_discard(struct block_device *bdev, sector_t sector, sector_t nr);

/* File operations of /dev/ferry/<group> (functions in chardev.rs). */
extern const struct file_operations ferry_chardev_fops;

/* Poll masks. */
extern const unsigned int ferry_pollin;
extern const unsigned int ferry_pollout;

/* Allocation flags the kernel crate of 6.12 lacks. */
extern const gfp_t ferry_gfp_noio;

#endif
