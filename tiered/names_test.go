package tiered_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestFormatDelay(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{10 * time.Second, "10s"},
		{5 * time.Minute, "5m"},
		{2 * time.Hour, "2h"},
		{90 * time.Minute, "90m"},
		{61 * time.Second, "61s"},
		{1500 * time.Millisecond, "1500ms"},
		{250 * time.Microsecond, "250us"},
		{10 * time.Nanosecond, "10ns"},
		{time.Second + time.Nanosecond, "1000000001ns"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			got := tiered.FormatDelay(tt.d)
			require.Equal(t, tt.want, got)
			require.NoError(t, tiered.ValidateTopicName("t."+got), "a formatted delay fits in a topic name")
		})
	}
}

func TestDefaultTopicName(t *testing.T) {
	tests := []struct {
		name   string
		params tiered.TopicParams
		want   string
	}{
		{"first tier", tiered.TopicParams{Topic: "orders", Handler: "billing", Tier: 1, Delay: 10 * time.Second}, "orders.billing.retry.10s"},
		{"later tier", tiered.TopicParams{Topic: "orders", Handler: "billing", Tier: 3, Delay: 5 * time.Minute}, "orders.billing.retry.5m"},
		{"dead-letter topic", tiered.TopicParams{Topic: "orders", Handler: "billing", DLQ: true}, "orders.billing.dlq"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, tiered.DefaultTopicName(tt.params))
		})
	}
}

func TestPolicy_topicsNamesEveryReachableTier(t *testing.T) {
	p := tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute, 5 * time.Minute}, MaxAttempts: 3}

	got, err := p.Topics("orders", "billing", nil)

	require.NoError(t, err)
	require.Equal(t, tiered.Topics{
		Main:    "orders",
		Handler: "billing",
		Tiers:   []string{"orders.billing.retry.10s", "orders.billing.retry.1m"},
		Delays:  []time.Duration{10 * time.Second, time.Minute},
		DLQ:     "orders.billing.dlq",
	}, got, "MaxAttempts 3 reaches two tiers: the 5m tier is never named")

	for i, name := range got.Tiers {
		tier, ok := got.Tier(name)
		require.True(t, ok)
		require.Equal(t, i+1, tier, "tiers are numbered from 1")
	}
	for _, notTier := range []string{"orders", "orders.billing.dlq", "orders.billing.retry.5m", ""} {
		_, ok := got.Tier(notTier)
		require.False(t, ok, "%q is not a tier topic", notTier)
	}
}

func TestPolicy_topicsWithCustomNamer(t *testing.T) {
	var params []tiered.TopicParams
	namer := func(p tiered.TopicParams) string {
		params = append(params, p)
		if p.DLQ {
			return "dead." + p.Handler
		}
		return fmt.Sprintf("retry.%s.%d", p.Handler, p.Tier)
	}
	p := tiered.Policy{Delays: []time.Duration{time.Second, time.Minute}}

	got, err := p.Topics("orders", "billing", namer)

	require.NoError(t, err)
	require.Equal(t, []string{"retry.billing.1", "retry.billing.2"}, got.Tiers)
	require.Equal(t, "dead.billing", got.DLQ)
	require.Equal(t, []tiered.TopicParams{
		{Topic: "orders", Handler: "billing", Tier: 1, Delay: time.Second},
		{Topic: "orders", Handler: "billing", Tier: 2, Delay: time.Minute},
		{Topic: "orders", Handler: "billing", DLQ: true},
	}, params)
}

func TestPolicy_topicsRejectsBadNames(t *testing.T) {
	oneTier := tiered.Policy{Delays: []time.Duration{time.Second}}
	ignoresDelay := func(p tiered.TopicParams) string {
		if p.DLQ {
			return p.Topic + ".dlq"
		}
		return p.Topic + ".retry"
	}
	tests := []struct {
		name     string
		policy   tiered.Policy
		topic    string
		handler  string
		namer    tiered.TopicNamer
		wantText string
	}{
		{"empty topic", oneTier, "", "billing", nil, "topic: invalid topic name: empty"},
		{"bad character in topic", oneTier, "orders!", "billing", nil, `"orders!" has '!' at byte 6`},
		{"space in handler", oneTier, "orders", "bill ing", nil, `has ' '`},
		{"empty handler", oneTier, "orders", "", nil, "empty handler name"},
		{"topic too long", oneTier, strings.Repeat("o", tiered.MaxTopicNameLen+1), "billing", nil, "is 250 bytes, the limit is 249"},
		{"tier name too long", oneTier, strings.Repeat("o", 240), "billing", nil, "the limit is 249"},
		{"two delays with one name", tiered.Policy{Delays: []time.Duration{time.Second, 1000 * time.Millisecond}}, "orders", "billing", nil, `are both named "orders.billing.retry.1s"`},
		{"namer that ignores the delay", tiered.Policy{Delays: []time.Duration{time.Second, time.Minute}}, "orders", "billing", ignoresDelay, `are both named "orders.retry"`},
		{"namer that returns the main topic", oneTier, "orders", "billing", func(tiered.TopicParams) string { return "orders" }, "the main topic"},
		{"namer that returns a bad name", oneTier, "orders", "billing", func(tiered.TopicParams) string { return "a/b" }, `"a/b" has '/'`},
		{"dot", oneTier, ".", "billing", nil, `"."`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			require.NotPanics(t, func() { _, err = tt.policy.Topics(tt.topic, tt.handler, tt.namer) })
			require.ErrorIs(t, err, tiered.ErrInvalidTopicName)
			require.ErrorContains(t, err, tt.wantText)
		})
	}
}

func TestValidateTopicName(t *testing.T) {
	valid := []string{"orders", "Orders-2024_v1.retry", strings.Repeat("a", tiered.MaxTopicNameLen), "..."}
	for _, name := range valid {
		require.NoError(t, tiered.ValidateTopicName(name), "%q", name)
	}
	invalid := []string{"", ".", "..", "orders!", "a b", "ordérs", "a/b", "a:b", strings.Repeat("a", tiered.MaxTopicNameLen+1)}
	for _, name := range invalid {
		err := tiered.ValidateTopicName(name)
		require.ErrorIs(t, err, tiered.ErrInvalidTopicName, "%q", name)
	}
}

func TestTopics_groupIsNamedFromTopicAndHandler(t *testing.T) {
	policy := tiered.Policy{Delays: []time.Duration{10 * time.Second, time.Minute}}
	topics, err := policy.Topics("orders", "billing", nil)
	require.NoError(t, err)
	require.Equal(t, "orders.billing", topics.Group("orders"))
	require.Equal(t, "orders.billing.retry.10s", topics.Group("orders.billing.retry.10s"))
	require.Equal(t, "orders.billing.retry.1m", topics.Group("orders.billing.retry.1m"))
	require.Equal(t, "", topics.Group("orders.billing.dlq"), "nothing consumes the dead-letter topic for the handler")
	require.Equal(t, "", topics.Group("invoices"))

	other, err := policy.Topics("invoices", "billing", nil)
	require.NoError(t, err)
	require.NotEqual(t, topics.Group("orders"), other.Group("invoices"), "equal handler names on two topics share no group")
}
