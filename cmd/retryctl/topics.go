package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// queueJSON is a queue in --json output.
type queueJSON struct {
	Kind      string     `json:"kind"` // "tier" or "dlq"
	Topic     string     `json:"topic"`
	Delay     string     `json:"delay,omitempty"`
	Group     string     `json:"group,omitempty"`
	Depth     int64      `json:"depth"`
	Oldest    *time.Time `json:"oldest,omitempty"`
	AgeSec    float64    `json:"age_seconds"`
	HeadDue   *time.Time `json:"head_due,omitempty"`
	Handler   string     `json:"handler"`
	MainTopic string     `json:"main_topic"`
}

func queueView(h dlq.Handler, q dlq.Queue, dlqKind bool, now time.Time) queueJSON {
	v := queueJSON{Kind: "tier", Topic: q.Topic, Group: q.Group, Depth: q.Depth, AgeSec: q.Age(now).Seconds(), Handler: h.Name, MainTopic: h.Topic}
	if dlqKind {
		v.Kind = "dlq"
	} else {
		v.Delay = tiered.FormatDelay(q.Delay)
	}
	if !q.Oldest.IsZero() {
		t := q.Oldest.UTC()
		v.Oldest = &t
	}
	if !q.HeadDue.IsZero() {
		t := q.HeadDue.UTC()
		v.HeadDue = &t
	}
	return v
}

func (a *app) topicsCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "topics [PREFIX]",
		Short: "List handlers with their tiers and dead-letter topics, and what waits in each",
		Long: `List every handler found on the broker (by the default topic naming rule),
with its tier topics and dead-letter topic, and for each:

  DEPTH     tier: messages its consumer group has not consumed yet (waiting or
            held until due); dead-letter topic: messages stored
  OLDEST    age of the oldest of them (broker time)
  HEAD DUE  tier: when the next message is due at the handler

PREFIX limits the search to topics that start with it.`,
		Example: `  retryctl topics
  retryctl topics orders.
  retryctl topics --json | jq '.[] | select(.kind == "dlq" and .depth > 0)'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			return a.listQueues(cmd, argv, true)
		},
	}
}

func (a *app) tierCommand() *cobra.Command {
	tier := &cobra.Command{
		Use:   "tier",
		Short: "Inspect tier topics",
	}
	tier.AddCommand(&cobra.Command{
		Use:   "ls [PREFIX]",
		Short: "List tier topics with depth, oldest waiting message and head due time",
		Long: `List the tier topics found on the broker: for each, the messages its
consumer group has not consumed yet (DEPTH), the age of the oldest of them
and when the head is due at the handler. A tier whose delay is no longer in
the handler's policy (retired) is listed as long as it exists.`,
		Example: `  retryctl tier ls
  retryctl tier ls orders.billing.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, argv []string) error {
			return a.listQueues(cmd, argv, false)
		},
	})
	return tier
}

// listQueues prints the topology's queues; withDLQ adds dead-letter
// topics.
func (a *app) listQueues(cmd *cobra.Command, argv []string, withDLQ bool) error {
	ctx := cmd.Context()
	c, err := a.open(ctx)
	if err != nil {
		return err
	}
	prefix := ""
	if len(argv) == 1 {
		prefix = argv[0]
	}
	topo, err := c.Topology(ctx, prefix)
	if err != nil {
		return err
	}
	now := time.Now()
	views := []queueJSON{}
	for _, h := range topo.Handlers {
		for _, q := range h.Tiers {
			views = append(views, queueView(h, q, false, now))
		}
		if withDLQ && h.DLQ != nil {
			views = append(views, queueView(h, *h.DLQ, true, now))
		}
	}
	if a.json {
		return printJSON(a.stdout, views)
	}
	if len(views) == 0 {
		what := "tier or dead-letter topics"
		if !withDLQ {
			what = "tier topics"
		}
		_, err := a.stdout.Write([]byte("No " + what + " found" + inPrefix(prefix) + ".\n"))
		return err
	}
	t := newTable(a.stdout, "MAIN TOPIC", "HANDLER", "KIND", "TOPIC", "DEPTH", "OLDEST", "HEAD DUE")
	for _, h := range topo.Handlers {
		for _, q := range h.Tiers {
			t.row(h.Topic, h.Name, "tier "+tiered.FormatDelay(q.Delay), q.Topic, itoa(q.Depth), ago(q.Oldest, now), until(q.HeadDue, now))
		}
		if withDLQ && h.DLQ != nil {
			t.row(h.Topic, h.Name, "dlq", h.DLQ.Topic, itoa(h.DLQ.Depth), ago(h.DLQ.Oldest, now), "-")
		}
	}
	return t.flush()
}

func inPrefix(prefix string) string {
	if prefix == "" {
		return ""
	}
	return " under " + prefix
}
