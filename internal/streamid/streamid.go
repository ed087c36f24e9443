// Package streamid reads and orders Redis stream entry IDs ("ms-seq"),
// for the Redis backend and the dlq package.
package streamid

import (
	"strconv"
	"strings"
	"time"
)

// Parse splits an entry ID "1700000000000-3" into its time part (Unix
// milliseconds) and sequence number. ok is false when id is not one.
func Parse(id string) (ms, seq uint64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}

// Time is the time an entry ID was made (Redis's clock), zero when id is
// not an entry ID.
func Time(id string) time.Time {
	ms, _, ok := Parse(id)
	if !ok {
		return time.Time{}
	}
	return time.UnixMilli(int64(ms))
}

// Compare orders two entry IDs as Redis does: -1, 0 or +1. A malformed ID
// sorts as 0-0.
func Compare(a, b string) int {
	am, as, _ := Parse(a)
	bm, bs, _ := Parse(b)
	switch {
	case am < bm:
		return -1
	case am > bm:
		return 1
	case as < bs:
		return -1
	case as > bs:
		return 1
	}
	return 0
}

// AtTime is the first entry ID of millisecond t: "{ms}-0".
func AtTime(t time.Time) string {
	return strconv.FormatInt(max(t.UnixMilli(), 0), 10) + "-0"
}
