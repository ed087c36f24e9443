package tiered_test

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/components/delay"
	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

func validInfo() tiered.Info {
	return tiered.Info{
		Attempt:       2,
		OriginalTopic: "orders",
		Handler:       "billing",
		FirstFailure:  time.UnixMilli(1_700_000_000_123),
		LastFailure:   time.UnixMilli(1_700_000_010_456),
		Tier:          2,
		LastError:     "card service unavailable",
	}
}

func TestInfo_writeReadRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		info tiered.Info
	}{
		{"tier message", validInfo()},
		{"dead-letter message (tier 0)", func() tiered.Info { i := validInfo(); i.Tier = 0; return i }()},
		{"no error text", func() tiered.Info { i := validInfo(); i.LastError = ""; return i }()},
		{"multi-byte error text", func() tiered.Info { i := validInfo(); i.LastError = "échec: 支払い失敗 ✗"; return i }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := message.Metadata{"unrelated": "kept"}
			tt.info.Write(md)

			got, err := tiered.ReadInfo(md)

			require.NoError(t, err)
			require.Equal(t, tt.info.Attempt, got.Attempt)
			require.Equal(t, tt.info.OriginalTopic, got.OriginalTopic)
			require.Equal(t, tt.info.Handler, got.Handler)
			require.True(t, tt.info.FirstFailure.Equal(got.FirstFailure), "FirstFailure %v != %v", tt.info.FirstFailure, got.FirstFailure)
			require.True(t, tt.info.LastFailure.Equal(got.LastFailure), "LastFailure %v != %v", tt.info.LastFailure, got.LastFailure)
			require.Equal(t, tt.info.Tier, got.Tier)
			require.Equal(t, tt.info.LastError, got.LastError)
			require.Equal(t, "kept", md.Get("unrelated"))
		})
	}
}

func TestInfo_writeUsesTheDocumentedKeys(t *testing.T) {
	md := message.Metadata{}
	validInfo().Write(md)

	require.Equal(t, message.Metadata{
		tiered.KeyAttempt:       "2",
		tiered.KeyOriginalTopic: "orders",
		tiered.KeyHandler:       "billing",
		tiered.KeyFirstFailure:  "1700000000123",
		tiered.KeyLastFailure:   "1700000010456",
		tiered.KeyTier:          "2",
		tiered.KeyLastError:     "card service unavailable",
	}, md)
}

func TestInfo_writeTruncatesTheError(t *testing.T) {
	info := validInfo()
	info.LastError = strings.Repeat("é", 100*1024/2) // 100 KB of two-byte runes

	md := message.Metadata{}
	info.Write(md)

	got := md.Get(tiered.KeyLastError)
	require.LessOrEqual(t, len(got), tiered.MaxErrorBytes)
	require.True(t, utf8.ValidString(got))
	require.True(t, strings.HasPrefix(info.LastError, strings.TrimSuffix(got, "…")))
}

func TestReadInfo_rejectsBadMetadataNamingTheKey(t *testing.T) {
	tests := []struct {
		name     string
		change   func(md message.Metadata)
		wantText string
	}{
		{"attempt not a number", func(md message.Metadata) { md.Set(tiered.KeyAttempt, "abc") }, `retry_attempt is "abc", not an integer`},
		{"attempt zero", func(md message.Metadata) { md.Set(tiered.KeyAttempt, "0") }, "retry_attempt is 0, must be at least 1"},
		{"attempt negative", func(md message.Metadata) { md.Set(tiered.KeyAttempt, "-4") }, "retry_attempt is -4"},
		{"attempt missing", func(md message.Metadata) { delete(md, tiered.KeyAttempt) }, "retry_attempt is missing"},
		{"tier not a number", func(md message.Metadata) { md.Set(tiered.KeyTier, "one") }, `retry_tier is "one"`},
		{"tier missing", func(md message.Metadata) { delete(md, tiered.KeyTier) }, "retry_tier is missing"},
		{"first failure not a time", func(md message.Metadata) { md.Set(tiered.KeyFirstFailure, "yesterday") }, `retry_first_failure_ms is "yesterday", not Unix milliseconds`},
		{"last failure missing", func(md message.Metadata) { delete(md, tiered.KeyLastFailure) }, "retry_last_failure_ms is missing"},
		{"original topic missing", func(md message.Metadata) { delete(md, tiered.KeyOriginalTopic) }, "retry_original_topic is missing"},
		{"handler empty", func(md message.Metadata) { md.Set(tiered.KeyHandler, "") }, "retry_handler is missing"},
		{"huge value is clipped in the error", func(md message.Metadata) { md.Set(tiered.KeyAttempt, strings.Repeat("x", 10_000)) }, "retry_attempt is"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := message.Metadata{}
			validInfo().Write(md)
			tt.change(md)

			_, err := tiered.ReadInfo(md)

			require.ErrorIs(t, err, tiered.ErrInvalidMetadata)
			require.ErrorContains(t, err, tt.wantText)
			require.Less(t, len(err.Error()), 200, "an error quoting a value stays short")
		})
	}
}

func TestClearInfo_removesRetryDelayAndPoisonKeysOnly(t *testing.T) {
	md := message.Metadata{"tenant": "acme", wmiddleware.CorrelationIDMetadataKey: "corr-1"}
	validInfo().Write(md)
	md.Set(tiered.KeyDueAt, "123")
	md.Set(delay.DelayedForKey, "10s")
	md.Set(delay.DelayedUntilKey, "2030-01-01T00:00:00Z")
	md.Set(wmiddleware.ReasonForPoisonedKey, "r")
	md.Set(wmiddleware.PoisonedTopicKey, "t")
	md.Set(wmiddleware.PoisonedHandlerKey, "h")
	md.Set(wmiddleware.PoisonedSubscriberKey, "s")

	tiered.ClearInfo(md)

	require.Equal(t, message.Metadata{"tenant": "acme", wmiddleware.CorrelationIDMetadataKey: "corr-1"}, md)
}

func TestClearOrigin_removesTheOriginKeysOnly(t *testing.T) {
	md := message.Metadata{"tenant": "acme"}
	validInfo().Write(md)
	md.Set(tiered.KeyKafkaPartition, "77")
	md.Set(tiered.KeyKafkaOffset, "9999")
	md.Set(tiered.KeyKafkaTimestamp, "1")
	md.Set(tiered.KeyKafkaKey, "forged")
	want := message.Metadata{"tenant": "acme"}
	validInfo().Write(want)

	tiered.ClearOrigin(md)

	require.Equal(t, want, md)
}

func TestDueAt(t *testing.T) {
	due := time.UnixMilli(1_700_000_000_123)
	tests := []struct {
		name     string
		md       message.Metadata
		wantDue  time.Time
		wantOK   bool
		wantText string // error text, when the value is malformed
	}{
		{"no due time", message.Metadata{}, time.Time{}, false, ""},
		{"retry_due_at_ms", message.Metadata{tiered.KeyDueAt: "1700000000123"}, due, true, ""},
		{"retry_due_at_ms wins over Watermill's key", message.Metadata{tiered.KeyDueAt: "1700000000123", delay.DelayedUntilKey: "2030-01-01T00:00:00Z"}, due, true, ""},
		{"Watermill's delayed-until key", message.Metadata{delay.DelayedUntilKey: "2023-11-14T22:13:20Z"}, time.Unix(1_700_000_000, 0), true, ""},
		{"malformed retry_due_at_ms", message.Metadata{tiered.KeyDueAt: "soon"}, time.Time{}, false, `retry_due_at_ms is "soon"`},
		{"malformed delayed-until", message.Metadata{delay.DelayedUntilKey: "tomorrow"}, time.Time{}, false, `_watermill_delayed_until is "tomorrow", not an RFC 3339 time`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := tiered.DueAt(tt.md)
			if tt.wantText != "" {
				require.ErrorIs(t, err, tiered.ErrInvalidMetadata)
				require.ErrorContains(t, err, tt.wantText)
				require.False(t, ok)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantOK, ok)
			require.True(t, tt.wantDue.Equal(got), "due %v, want %v", got, tt.wantDue)
		})
	}
}

func TestTruncate(t *testing.T) {
	tests := []struct {
		name string
		s    string
		n    int
		want string
	}{
		{"short enough", "hello", 5, "hello"},
		{"empty", "", 0, ""},
		{"ascii cut", "hello world", 8, "hello…"},
		{"cut inside a two-byte rune backs off", "aéééé", 7, "aé…"},
		{"cut right after a rune", "aéééé", 6, "aé…"},
		{"cut inside a four-byte rune backs off", "ab😀😀", 8, "ab…"},
		{"cut right after a four-byte rune", "ab😀😀", 9, "ab😀…"},
		{"cut inside a three-byte rune backs off", "支払い失敗", 8, "支…"},
		{"limit equal to the ellipsis", "hello", 3, "…"},
		{"limit below the ellipsis", "hello", 2, "he"},
		{"limit below the ellipsis inside a rune", "éé", 1, ""},
		{"zero limit", "hello", 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tiered.Truncate(tt.s, tt.n)
			require.Equal(t, tt.want, got)
			require.LessOrEqual(t, len(got), tt.n, "at most n bytes")
			require.True(t, utf8.ValidString(got), "valid UTF-8: %q", got)
		})
	}
}

func TestTruncate_boundsEveryLengthOnMultiByteText(t *testing.T) {
	s := strings.Repeat("a支😀é", 50)
	for n := 0; n <= len(s)+1; n++ {
		got := tiered.Truncate(s, n)
		require.LessOrEqual(t, len(got), n, "n=%d", n)
		require.True(t, utf8.ValidString(got), "n=%d: %q", n, got)
		require.True(t, strings.HasPrefix(s, strings.TrimSuffix(got, "…")), "n=%d: %q is a prefix", n, got)
		if n >= len(s) {
			require.Equal(t, s, got, "n=%d", n)
		}
	}
}

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
