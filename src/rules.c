/* SPDX-License-Identifier: MIT */
/* rules: placeholder, implemented in its own change. */
#include "pgveil/rules.h"
