/* SPDX-License-Identifier: MIT */
/* sqlinfo: placeholder, implemented in its own change. */
#include "pgveil/sqlinfo.h"
