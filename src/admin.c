/* SPDX-License-Identifier: MIT */
/* admin: placeholder, implemented in its own change. */
#include "pgveil/admin.h"
