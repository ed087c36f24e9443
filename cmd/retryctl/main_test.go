package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/dlq"
	"github.com/retry-kafka/retry-kafka/internal/dlqtest"
	"github.com/retry-kafka/retry-kafka/internal/kafkatest"
	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// The binary under test, built once.
var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "retryctl-test-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "retryctl")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = &buildError{err, out}
		}
	})
	require.NoError(t, buildErr)
	return binPath
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + ": " + string(e.out) }

func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		_ = os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// env is a broker the binary reaches by URL: a kfake cluster started by
// the test (or KAFKA_BROKERS), or a real Redis.
type env struct {
	name    string
	url     string
	backend tiered.Backend
	redis   *redis.Client
	t       *testing.T
}

func forEachEnv(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, name := range []string{"kafka", "redis"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, newEnv(t, name))
		})
	}
}

func newEnv(t *testing.T, name string) *env {
	e := &env{name: name, t: t}
	prefix := "t" + watermill.NewShortUUID()[:8] + "."
	switch name {
	case "kafka":
		// kafka://embedded lives inside one process: the binary gets
		// the address of a broker this test started (or a real one).
		k := kafkatest.Start(t)
		e.url = "kafka://" + strings.Join(k.Brokers, ",") + "?create_topics=true&replication_factor=1&partitions=2&group_prefix=" + prefix
	case "redis":
		addr := redistest.Addr(t)
		e.url = "redis://" + addr + "/0?consumer_group_prefix=" + prefix
		e.redis = redis.NewClient(&redis.Options{Addr: addr})
		t.Cleanup(func() {
			ctx := context.Background()
			iter := e.redis.Scan(ctx, 0, redistest.Pattern(t), 100).Iterator()
			for iter.Next(ctx) {
				_ = e.redis.Del(ctx, iter.Val()).Err()
			}
			_ = e.redis.Close()
		})
	}
	b, err := pubsub.Open(context.Background(), e.url, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	e.backend = b
	return e
}

// handler prepares a handler's topics on a new main topic.
func (e *env) handler(name string) tiered.Topics {
	e.t.Helper()
	main := kafkatest.Topic(e.t)
	if e.name == "redis" {
		main = redistest.Name(e.t, "orders")
	}
	topics, err := tiered.Policy{Delays: []time.Duration{time.Minute}}.Topics(main, name, nil)
	require.NoError(e.t, err)
	require.NoError(e.t, e.backend.Prepare(context.Background(), topics))
	if e.redis != nil {
		for _, s := range append([]string{topics.Main}, topics.Tiers...) {
			require.NoError(e.t, e.redis.XAdd(context.Background(), &redis.XAddArgs{Stream: s, Values: map[string]any{"init": "1"}}).Err())
			require.NoError(e.t, e.redis.XTrimMaxLen(context.Background(), s, 0).Err())
		}
	}
	return topics
}

// result is one run of the binary.
type result struct {
	code           int
	stdout, stderr string
}

// run runs the binary with args and stdin, the broker in BROKER_URL.
func (e *env) run(stdin string, args ...string) result {
	e.t.Helper()
	cmd := exec.Command(binary(e.t), args...)
	cmd.Env = append(os.Environ(), "BROKER_URL="+e.url)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else {
		require.NoError(e.t, err)
	}
	return r
}

func (e *env) ok(args ...string) result {
	e.t.Helper()
	r := e.run("", args...)
	require.Equal(e.t, 0, r.code, "retryctl %v\nstdout:\n%s\nstderr:\n%s", args, r.stdout, r.stderr)
	return r
}

func (e *env) count(topic string) int {
	e.t.Helper()
	c, err := dlq.New(dlq.Config{Backend: e.backend}, nil)
	require.NoError(e.t, err)
	defer c.Close()
	d, err := c.Depth(context.Background(), topic)
	require.NoError(e.t, err)
	return int(d.Messages)
}

func (e *env) uuids(topic string) map[string]int {
	e.t.Helper()
	c, err := dlq.New(dlq.Config{Backend: e.backend}, nil)
	require.NoError(e.t, err)
	defer c.Close()
	out := map[string]int{}
	for m, err := range c.Messages(context.Background(), topic, dlq.Filter{}) {
		require.NoError(e.t, err)
		out[m.UUID]++
	}
	return out
}

func jsonLines(t *testing.T, s string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var v map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &v), sc.Text())
		out = append(out, v)
	}
	return out
}

func TestRetryctl_readCommands(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		topics := e.handler("billing")
		uuids := dlqtest.Write(t, e.backend, topics,
			dlqtest.Letter{Reason: "card declined for order 17", Key: "alice"},
			dlqtest.Letter{Reason: "card declined for order 18"},
			dlqtest.Letter{Reason: "gateway timeout"})

		r := e.ok("topics", topics.Main)
		require.Contains(t, r.stdout, "MAIN TOPIC")
		require.Contains(t, r.stdout, topics.DLQ)
		require.Contains(t, r.stdout, topics.Tiers[0])
		var views []map[string]any
		require.NoError(t, json.Unmarshal([]byte(e.ok("topics", topics.Main, "--json").stdout), &views))
		require.Len(t, views, 2)
		require.Equal(t, "tier", views[0]["kind"])
		require.Equal(t, "dlq", views[1]["kind"])
		require.EqualValues(t, 3, views[1]["depth"])
		require.Equal(t, "billing", views[1]["handler"])
		require.Contains(t, e.ok("tier", "ls", topics.Main).stdout, topics.Tiers[0])

		r = e.ok("dlq", "ls", topics.DLQ)
		for _, u := range uuids {
			require.Contains(t, r.stdout, u)
		}
		require.Contains(t, r.stdout, "card declined for order 17")
		lines := jsonLines(t, e.ok("dlq", "ls", topics.DLQ, "--json", "--reason", `order \d+`).stdout)
		require.Len(t, lines, 2)
		r = e.ok("dlq", "ls", topics.DLQ, "--limit", "1")
		require.Equal(t, 2, strings.Count(r.stdout, "\n"), "a header and one row")
		require.Contains(t, r.stderr, "first 1 shown")

		// show, by UUID and by ID
		r = e.ok("dlq", "show", topics.DLQ, uuids[2])
		require.Contains(t, r.stdout, "gateway timeout")
		require.Contains(t, r.stdout, "Payload")
		id := jsonLines(t, e.ok("dlq", "ls", topics.DLQ, "--json", "--uuid", uuids[0]).stdout)[0]["id"].(string)
		shown := jsonLines(t, e.ok("dlq", "show", topics.DLQ, id, "--json").stdout)
		require.Equal(t, uuids[0], shown[0]["uuid"])

		var stats dlq.Stats
		require.NoError(t, json.Unmarshal([]byte(e.ok("dlq", "stats", topics.DLQ, "--json").stdout), &stats))
		require.EqualValues(t, 3, stats.Count)
		require.Equal(t, "attempt N of N failed, no attempts left: card declined for order N", stats.Reasons[0].Value)
		require.EqualValues(t, 2, stats.Reasons[0].Count)
		r = e.ok("dlq", "stats", topics.DLQ)
		require.Contains(t, r.stdout, "66.7%")

		out := filepath.Join(t.TempDir(), "dlq.jsonl")
		r = e.ok("dlq", "export", topics.DLQ, "-o", out)
		require.Contains(t, r.stderr, "exported 3 messages")
		data, err := os.ReadFile(out)
		require.NoError(t, err)
		require.Len(t, jsonLines(t, string(data)), 3)
	})
}

func TestRetryctl_redriveAndPurge(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		topics := e.handler("billing")
		uuids := dlqtest.Write(t, e.backend, topics, dlqtest.Letter{}, dlqtest.Letter{}, dlqtest.Letter{Reason: "declined"})
		capped := dlqtest.Write(t, e.backend, topics, dlqtest.Letter{Redrives: 3})

		r := e.ok("dlq", "redrive", topics.DLQ, "--dry-run")
		require.Contains(t, r.stdout, "Would move 3 of 4 selected messages")
		require.Contains(t, r.stdout, "redrive cap reached")
		require.Contains(t, r.stdout, "payment gateway timeout")
		require.Zero(t, e.count(topics.Main), "a dry run moves nothing")

		r = e.run("", "dlq", "redrive", topics.DLQ)
		require.Equal(t, 4, r.code, "no answer on stdin, no --yes: %s", r.stderr)
		require.Contains(t, r.stderr, "--yes")
		r = e.run("n\n", "dlq", "redrive", topics.DLQ)
		require.Equal(t, 4, r.code)
		require.Zero(t, e.count(topics.Main))

		r = e.run("y\n", "dlq", "redrive", topics.DLQ, "--reason", "declined")
		require.Equal(t, 0, r.code, r.stderr)
		require.Contains(t, r.stderr, "[y/N]")
		require.Contains(t, r.stdout, "Moved 1 of 1")
		require.Contains(t, r.stderr, "redrive: ", "plain progress lines off a terminal")

		r = e.run("", "dlq", "redrive", topics.DLQ, "--yes", "--json")
		require.Equal(t, 5, r.code, "finished, with a capped message skipped: %s", r.stderr)
		var res dlq.RedriveResult
		require.NoError(t, json.Unmarshal([]byte(r.stdout), &res))
		require.EqualValues(t, 3, res.Moved)
		require.Equal(t, map[string]int64{dlq.SkipCapped: 1}, res.SkippedBy)
		require.Equal(t, capped[0], res.SkippedExamples[0].UUID)
		moved := e.uuids(topics.Main)
		for _, u := range uuids[:2] {
			require.Equal(t, 1, moved[u])
		}
		require.Equal(t, 2, moved[uuids[2]], "the filtered redrive and the unfiltered one have their own checkpoints")

		if e.name == "kafka" {
			r = e.run("", "dlq", "purge", topics.DLQ, "--reason", "declined", "--yes")
			require.Equal(t, 2, r.code)
			require.Contains(t, r.stderr, "DeleteRecords")
		} else {
			r = e.ok("dlq", "purge", topics.DLQ, "--reason", "declined", "--yes")
			require.Contains(t, r.stdout, "Deleted 1 messages")
		}
		left := e.count(topics.DLQ)
		r = e.ok("dlq", "purge", topics.DLQ, "--dry-run")
		require.Contains(t, r.stdout, "Would delete")
		require.Equal(t, left, e.count(topics.DLQ))
		r = e.run("", "dlq", "purge", topics.DLQ)
		require.Equal(t, 4, r.code)
		e.ok("dlq", "purge", topics.DLQ, "--before", "0s", "--yes")
		require.Zero(t, e.count(topics.DLQ))
	})
}

func TestRetryctl_badInput(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		topics := e.handler("billing")
		dlqtest.Write(t, e.backend, topics, dlqtest.Letter{})
		cases := []struct {
			args []string
			code int
			says string
		}{
			{[]string{"dlq", "ls", topics.DLQ + ".nope"}, 3, "does not exist"},
			{[]string{"dlq", "show", topics.DLQ, "0/99999"}, 3, "not found"},
			{[]string{"dlq", "show", topics.DLQ, "no-such-uuid"}, 3, "no message with UUID"},
			{[]string{"dlq", "redrive", topics.Main, "--yes"}, 2, "not a dead-letter topic"},
			{[]string{"dlq", "stats", topics.DLQ, "--reason", "(x"}, 2, "not a regular expression"},
			{[]string{"dlq", "ls", topics.DLQ, "--since", "yesterday"}, 2, "is not a time"},
			{[]string{"dlq", "ls"}, 2, "takes one TOPIC"},
			{[]string{"dlq", "ls", topics.DLQ, "--limitt", "3"}, 2, "unknown flag"},
			{[]string{"--broker", "kafka://", "topics"}, 2, "names no broker"},
			{[]string{"--broker", "mem://", "topics"}, 2, "cannot be inspected"},
			{[]string{"--broker", "nats://x", "topics"}, 2, "unknown backend scheme"},
			{[]string{"dlq", "redrive", topics.DLQ, "--rate", "-1"}, 2, "--rate"},
			{[]string{"dlq", "purge", topics.DLQ, "--before-offset", "x"}, 2, "PARTITION:OFFSET"},
		}
		for _, c := range cases {
			r := e.run("", c.args...)
			require.Equal(t, c.code, r.code, "retryctl %v: %s", c.args, r.stderr)
			require.Contains(t, r.stderr, c.says, "retryctl %v", c.args)
		}
		cmd := exec.Command(binary(t), "topics")
		cmd.Env = append(os.Environ(), "BROKER_URL=")
		out, err := cmd.CombinedOutput()
		require.Error(t, err)
		require.Equal(t, 2, cmd.ProcessState.ExitCode())
		require.Contains(t, string(out), "BROKER_URL")
		help, err := exec.Command(binary(t), "dlq", "redrive", "--help").CombinedOutput()
		require.NoError(t, err)
		require.Contains(t, string(help), "checkpoint")
		require.Contains(t, string(help), "--dry-run")
	})
}

// TestRetryctl_redriveKilledThenRunAgain kills a redrive with SIGKILL while
// it moves messages, runs it again, and counts: nothing lost, and at most
// the batch in flight at the kill moved twice.
func TestRetryctl_redriveKilledThenRunAgain(t *testing.T) {
	forEachEnv(t, func(t *testing.T, e *env) {
		topics := e.handler("billing")
		const n = 4000
		letters := make([]dlqtest.Letter, n)
		uuids := dlqtest.Write(t, e.backend, topics, letters...)

		cmd := exec.Command(binary(t), "dlq", "redrive", topics.DLQ, "--yes", "--rate", "1500")
		cmd.Env = append(os.Environ(), "BROKER_URL="+e.url)
		stderr, err := cmd.StderrPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		// Kill at the second progress line (about a second in): batches
		// are confirmed and checkpointed, the next one is on its way.
		sc := bufio.NewScanner(stderr)
		lines := 0
		for lines < 2 && sc.Scan() {
			if strings.HasPrefix(sc.Text(), "redrive: ") {
				lines++
			}
		}
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		go func() { _, _ = io.Copy(io.Discard, stderr) }()
		_ = cmd.Wait()
		firstRun := len(e.uuids(topics.Main))
		require.Less(t, firstRun, n, "killed half-way")

		e.ok("dlq", "redrive", topics.DLQ, "--yes")
		moved := e.uuids(topics.Main)
		dup := 0
		for _, u := range uuids {
			require.GreaterOrEqual(t, moved[u], 1, "nothing lost")
			dup += moved[u] - 1
		}
		require.Len(t, moved, n)
		require.LessOrEqual(t, dup, 2000, "only the batch in flight moves twice")
		t.Logf("%s: killed after moving %d of %d; %d moved twice", e.name, firstRun, n, dup)
	})
}
