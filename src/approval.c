/* SPDX-License-Identifier: MIT */
/* approval: placeholder, implemented in its own change. */
#include "pgveil/approval.h"
