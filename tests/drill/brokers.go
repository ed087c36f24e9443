package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
)

// broker is the broker a drill runs on, which it can crash and bring back.
type broker interface {
	// URL is the backend URL for pubsub.Open, with params added.
	URL(params url.Values) string
	// Describe says what runs, for the report.
	Describe() string
	// Crash kills (SIGKILL) the broker, or in a cluster the node leading
	// partition 0 of topic, and says which.
	Crash(ctx context.Context, topic string) (string, error)
	// Recover starts what Crash killed again on the same data and port,
	// and returns once it answers.
	Recover(ctx context.Context) error
	// Stop stops what the drill started and removes its data.
	Stop() error
}

// kafkaBroker is Apache Kafka run by scripts/kafka.sh in a state dir of
// the drill's own.
type kafkaBroker struct {
	script    string
	stateDir  string
	nodes     int
	bootstrap string
	started   bool // by the drill, so it stops it
	killed    int  // node killed by Crash, 0 if none
	log       func(format string, args ...any)
}

func startKafka(ctx context.Context, script, stateDir string, nodes int, log func(string, ...any)) (*kafkaBroker, error) {
	k := &kafkaBroker{script: script, stateDir: stateDir, nodes: nodes, log: log}
	if out, err := k.run(ctx, "status"); err == nil && len(strings.Split(out, ",")) == nodes {
		k.bootstrap = out
		log("reusing the Kafka of %s: %s (left running at the end)", stateDir, out)
		return k, nil
	}
	out, err := k.run(ctx, "start")
	if err != nil {
		return nil, err
	}
	k.bootstrap, k.started = out, true
	return k, nil
}

// run runs scripts/kafka.sh and returns its stdout's last line.
func (k *kafkaBroker) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, k.script, args...)
	cmd.Env = append(os.Environ(), "KAFKA_STATE_DIR="+k.stateDir, "KAFKA_NODES="+strconv.Itoa(k.nodes))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%s %s: %w\n%s", k.script, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return strings.TrimSpace(lines[len(lines)-1]), nil
}

func (k *kafkaBroker) URL(params url.Values) string {
	return "kafka://" + k.bootstrap + "?" + params.Encode()
}

func (k *kafkaBroker) Describe() string {
	if k.nodes == 1 {
		return "Apache Kafka (scripts/kafka.sh, 1 node) at " + k.bootstrap
	}
	return fmt.Sprintf("Apache Kafka (scripts/kafka.sh, %d-node KRaft cluster) at %s", k.nodes, k.bootstrap)
}

func (k *kafkaBroker) Crash(ctx context.Context, topic string) (string, error) {
	node := int32(1)
	if k.nodes > 1 {
		var err error
		if node, _, err = busiestLeader(strings.Split(k.bootstrap, ","), topic); err != nil {
			return "", err
		}
	}
	if _, err := k.run(ctx, "kill", fmt.Sprint(node)); err != nil {
		return "", err
	}
	k.killed = int(node)
	if k.nodes == 1 {
		return "kill -9 of the Kafka JVM", nil
	}
	return fmt.Sprintf("kill -9 of node %d, leader of most partitions of %s", node, topic), nil
}

// busiestLeader returns the broker that leads the most partitions of
// topic (the lowest id on a tie), and its address.
func busiestLeader(brokers []string, topic string) (int32, string, error) {
	c := sarama.NewConfig()
	c.Version = sarama.V3_0_0_0
	client, err := sarama.NewClient(brokers, c)
	if err != nil {
		return 0, "", err
	}
	defer client.Close()
	partitions, err := client.Partitions(topic)
	if err != nil {
		return 0, "", fmt.Errorf("partitions of %s: %w", topic, err)
	}
	led := map[int32]int{}
	addr := map[int32]string{}
	for _, p := range partitions {
		b, err := client.Leader(topic, p)
		if err != nil {
			return 0, "", fmt.Errorf("leader of %s/%d: %w", topic, p, err)
		}
		led[b.ID()]++
		addr[b.ID()] = b.Addr()
	}
	best := int32(-1)
	for id, n := range led {
		if best < 0 || n > led[best] || n == led[best] && id < best {
			best = id
		}
	}
	if best < 0 {
		return 0, "", fmt.Errorf("%s has no partitions", topic)
	}
	return best, addr[best], nil
}

func (k *kafkaBroker) Recover(ctx context.Context) error {
	if k.killed == 0 {
		return errors.New("nothing to recover")
	}
	_, err := k.run(ctx, "resume", strconv.Itoa(k.killed))
	if err == nil {
		k.killed = 0
	}
	return err
}

func (k *kafkaBroker) Stop() error {
	if !k.started {
		return nil
	}
	_, err := k.run(context.Background(), "stop")
	return err
}

// redisBroker is a redis-server of the drill's own: a free port, a
// temporary directory, the append-only file synced on every write
// (appendfsync always), so a kill -9 loses nothing it acknowledged.
type redisBroker struct {
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

func startRedis(ctx context.Context, dir string) (*redisBroker, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("redis-server is not on PATH: install it (Debian/Ubuntu: apt-get install -y redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	r := &redisBroker{bin: bin, dir: dir, port: port}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	return r, r.launch(ctx)
}

func (r *redisBroker) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

func (r *redisBroker) launch(ctx context.Context) error {
	cmd := exec.Command(r.bin,
		"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--dir", r.dir, "--save", "",
		"--appendonly", "yes", "--appendfsync", "always",
		"--logfile", filepath.Join(r.dir, "redis.log"), "--daemonize", "no")
	// The server dies with the drill if the drill dies without stopping it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	r.cmd, r.done = cmd, done
	deadline := time.Now().Add(60 * time.Second)
	for {
		if pingRedis(r.addr()) == nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("redis-server exited at start; see %s", filepath.Join(r.dir, "redis.log"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("redis-server did not answer PING within 60s")
		}
	}
}

func (r *redisBroker) URL(params url.Values) string {
	return "redis://" + r.addr() + "/0?" + params.Encode()
}

func (r *redisBroker) Describe() string {
	return "redis-server " + redisVersion(r.bin) + " at " + r.addr() + " (appendonly yes, appendfsync always)"
}

func (r *redisBroker) Crash(context.Context, string) (string, error) {
	if r.cmd == nil {
		return "", errors.New("redis-server is not running")
	}
	_ = r.cmd.Process.Kill()
	<-r.done
	r.cmd = nil
	return "kill -9 of redis-server", nil
}

func (r *redisBroker) Recover(ctx context.Context) error { return r.launch(ctx) }

func (r *redisBroker) Stop() error {
	if r.cmd != nil {
		_ = r.cmd.Process.Kill()
		<-r.done
		r.cmd = nil
	}
	return os.RemoveAll(r.dir)
}

// pingRedis sends PING and expects PONG (RESP), with a short timeout. A
// server still loading its append-only file answers -LOADING.
func pingRedis(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("*1\r\n$4\r\nPING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strings.TrimSpace(line))
	}
	return nil
}

func redisVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "?"
	}
	for _, f := range strings.Fields(string(out)) {
		if v, ok := strings.CutPrefix(f, "v="); ok {
			return v
		}
	}
	return "?"
}
