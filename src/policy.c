/* SPDX-License-Identifier: MIT */
/* policy: placeholder, implemented in its own change. */
#include "pgveil/policy.h"
