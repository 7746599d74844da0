// SPDX-License-Identifier: GPL-2.0
/*
 * Out-of-line wrappers for static inline block-layer functions, called from
 * the Rust side of dm-ferry.  No logic lives here.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>

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
