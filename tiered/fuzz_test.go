package tiered_test

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/retry-kafka/retry-kafka/tiered"
)

// The fuzz targets of the parsers that read what anyone can write: retry
// metadata, due times and topic names. `go test` runs their seed corpus
// (the f.Add calls and testdata/fuzz); .ci/run fuzzes each for a few
// seconds:
//
//	go test -run '^$' -fuzz FuzzReadInfo -fuzztime 10s ./tiered

// ReadInfo never panics on any metadata; what it accepts, Write writes back
// so that ReadInfo reads the same again, and what it rejects wraps
// ErrInvalidMetadata.
func FuzzReadInfo(f *testing.F) {
	f.Add("1", "1", "orders", "billing", "1700000000000", "1700000000001", "boom")
	f.Add("9223372036854775807", "0", "o", "h", "0", "0", "")
	f.Add("-1", "x", "", "", "soon", "", "\xff\xfe")
	f.Add(" 2 ", "2", "orders", "billing", "-5", "99999999999999999999", strings.Repeat("é", 600))
	f.Fuzz(func(t *testing.T, attempt, tier, topic, handler, first, last, lastErr string) {
		md := message.Metadata{
			tiered.KeyAttempt: attempt, tiered.KeyTier: tier, tiered.KeyOriginalTopic: topic, tiered.KeyHandler: handler,
			tiered.KeyFirstFailure: first, tiered.KeyLastFailure: last, tiered.KeyLastError: lastErr,
		}
		info, err := tiered.ReadInfo(md)
		if err != nil {
			if !strings.Contains(err.Error(), tiered.ErrInvalidMetadata.Error()) {
				t.Fatalf("error %q does not wrap ErrInvalidMetadata", err)
			}
			if len(err.Error()) > 512 {
				t.Fatalf("error of %d bytes: values quoted in errors must be bounded", len(err.Error()))
			}
			return
		}
		if info.Attempt < 1 {
			t.Fatalf("accepted attempt %d", info.Attempt)
		}
		out := message.Metadata{}
		info.Write(out)
		if len(out.Get(tiered.KeyLastError)) > tiered.MaxErrorBytes {
			t.Fatalf("Write kept %d bytes of error text", len(out.Get(tiered.KeyLastError)))
		}
		again, err := tiered.ReadInfo(out)
		if err != nil {
			t.Fatalf("ReadInfo of what Write wrote: %v", err)
		}
		again.LastError, info.LastError = "", ""
		if !again.FirstFailure.Equal(info.FirstFailure) || !again.LastFailure.Equal(info.LastFailure) {
			t.Fatalf("times changed: %v %v -> %v %v", info.FirstFailure, info.LastFailure, again.FirstFailure, again.LastFailure)
		}
		again.FirstFailure, again.LastFailure, info.FirstFailure, info.LastFailure = time.Time{}, time.Time{}, time.Time{}, time.Time{}
		if again != info {
			t.Fatalf("round trip changed %+v into %+v", info, again)
		}
	})
}

// DueAt never panics; a due time it reads from retry_due_at_ms is the
// millisecond written; a value it cannot read is an error, never a zero
// time taken for "due now".
func FuzzDueAt(f *testing.F) {
	f.Add("1700000000000", "", true)
	f.Add("", "2024-01-01T00:00:00Z", false)
	f.Add("-9223372036854775808", "", true)
	f.Add("soon", "tomorrow", true)
	f.Add("", "9999-12-31T23:59:59+14:00", false)
	f.Fuzz(func(t *testing.T, dueMs, delayedUntil string, useDueKey bool) {
		md := message.Metadata{}
		if useDueKey {
			md[tiered.KeyDueAt] = dueMs
		}
		if delayedUntil != "" {
			md[delay.DelayedUntilKey] = delayedUntil
		}
		due, ok, err := tiered.DueAt(md)
		if err != nil {
			if ok {
				t.Fatalf("ok with an error: %v", err)
			}
			return
		}
		if !useDueKey && delayedUntil == "" && ok {
			t.Fatalf("a due time from no key: %v", due)
		}
		if useDueKey && ok {
			ms, perr := strconv.ParseInt(strings.TrimSpace(dueMs), 10, 64)
			if perr != nil || due.UnixMilli() != ms {
				t.Fatalf("%q read as %v", dueMs, due)
			}
		}
	})
}

// ValidateTopicName never panics and accepts only names every backend can
// use; Policy.Topics names only such topics, or fails.
func FuzzTopicNames(f *testing.F) {
	f.Add("orders", "billing", int64(10*time.Second))
	f.Add(".", "..", int64(1))
	f.Add(strings.Repeat("o", 240), "b", int64(time.Hour))
	f.Add("orders\x00", "bill ing", int64(-1))
	f.Add("ørders", "billing", int64(1500*time.Millisecond))
	f.Fuzz(func(t *testing.T, topic, handler string, delayNs int64) {
		if err := tiered.ValidateTopicName(topic); err == nil {
			requireUsable(t, topic)
		}
		d := time.Duration(delayNs)
		topics, err := tiered.Policy{Delays: []time.Duration{d}}.Topics(topic, handler, nil)
		if err != nil {
			return
		}
		for _, name := range append([]string{topics.Main, topics.DLQ}, topics.Tiers...) {
			requireUsable(t, name)
		}
		if topics.Group(topics.Main) == "" || topics.Group(topics.Tiers[0]) == "" {
			t.Fatalf("no group for the topics of %q/%q", topic, handler)
		}
	})
}

func requireUsable(t *testing.T, name string) {
	t.Helper()
	if name == "" || len(name) > tiered.MaxTopicNameLen || name == "." || name == ".." {
		t.Fatalf("accepted topic name %q", name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			t.Fatalf("accepted topic name %q with %q", name, c)
		}
	}
}

// Truncate keeps a prefix of at most n bytes, and valid UTF-8 stays valid.
func FuzzTruncate(f *testing.F) {
	f.Add("hello, world", 5)
	f.Add("ééé", 4)
	f.Add("\xff\xfe\xfd", 2)
	f.Add("…", 2)
	f.Add("abc", -1)
	f.Fuzz(func(t *testing.T, s string, n int) {
		got := tiered.Truncate(s, n)
		if len(s) <= n {
			if got != s {
				t.Fatalf("Truncate(%q, %d) = %q, want it unchanged", s, n, got)
			}
			return
		}
		if len(got) > max(n, 0) {
			t.Fatalf("Truncate(%q, %d) is %d bytes", s, n, len(got))
		}
		if !strings.HasPrefix(s, strings.TrimSuffix(got, "…")) {
			t.Fatalf("Truncate(%q, %d) = %q is not a prefix", s, n, got)
		}
		if utf8.ValidString(s) && !utf8.ValidString(got) {
			t.Fatalf("Truncate(%q, %d) = %q is not valid UTF-8", s, n, got)
		}
	})
}
