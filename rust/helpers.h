/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Out-of-line wrappers for static inline functions of the block layer that
 * bindgen cannot bind.  Each one is a single call; see helpers.c.
 */
#ifndef FERRY_HELPERS_H
#define FERRY_HELPERS_H

#include <linux/types.h>

struct bio;
struct block_device;

void ferry_bio_set_dev(struct bio *bio, struct block_device *bdev);
sector_t ferry_bdev_nr_sectors(struct block_device *bdev);
unsigned int ferry_bdev_logical_block_size(struct block_device *bdev);
dev_t ferry_bdev_devt(struct block_device *bdev);

#endif
