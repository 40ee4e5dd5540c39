package store

import "syscall"

// mmapPopulate pre-faults the whole map on open: one sequential read instead of a page
// fault per page touched by the first scan.
const mmapPopulate = syscall.MAP_POPULATE
