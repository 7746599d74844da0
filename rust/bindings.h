/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The C declarations dm-ferry uses that the kernel crate of 6.12 does not
 * bind.  bindgen turns this header into bindings_generated.rs at build time,
 * with the module's own compiler flags, so every layout comes from the
 * kernel's headers and configuration.
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/crc32c.h>
#include <linux/device-mapper.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/poll.h>
#include <linux/spinlock.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xxhash.h>

#include "helpers.h"
