package bench_test

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
)

// childEnv makes the test binary a helper process instead of running
// benchmarks: "kfake" runs an embedded Kafka broker (see startKfakeProcess).
const childEnv = "RETRY_KAFKA_BENCH_CHILD"

// TestMain runs the helper process when asked to, and otherwise gives a
// benchmark run a Redis server of its own: unless REDIS_ADDR is set, it
// starts redis-server (if on PATH) on a free port for the whole run, so that
// nobody else's server (redistest's fallback, 127.0.0.1:6379, is shared)
// comes and goes under the benchmarks or adds its data to the broker's
// memory figure.
func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "kfake" {
		os.Exit(runKfake())
	}
	flag.Parse()
	stop := func() {}
	if benchmarking := flag.Lookup("test.bench").Value.String() != ""; benchmarking && os.Getenv(redistest.EnvAddr) == "" {
		if addr, kill, err := startRedis(); err == nil {
			_ = os.Setenv(redistest.EnvAddr, addr)
			stop = kill
		} else {
			fmt.Fprintf(os.Stderr, "bench: no redis-server of our own (%v); redistest picks a server\n", err)
		}
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

// startRedis runs redis-server on a free loopback port, without
// persistence, and returns its address and how to stop it.
func startRedis() (string, func(), error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir, err := os.MkdirTemp("", "bench-redis-")
	if err != nil {
		return "", nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", dir, "--logfile", "", "--daemonize", "no")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = os.RemoveAll(dir)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			_ = c.Close()
			return addr, stop, nil
		}
	}
	stop()
	return "", nil, fmt.Errorf("redis-server on %s did not start", addr)
}

// runKfake is the helper process: a kfake broker whose addresses it prints
// on the first line of stdout, stopped when stdin closes.
func runKfake() int {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cluster.Close()
	fmt.Println(strings.Join(cluster.ListenAddrs(), ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// kfakeProcess is an embedded broker in a process of its own.
type kfakeProcess struct {
	Brokers []string
	Pid     int
}

// startKfakeProcess runs kfake in a child process (this test binary again),
// so that the memory it holds for the messages is not counted as ours.
func startKfakeProcess(b *testing.B) kfakeProcess {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), childEnv+"=kfake")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cancel()
			<-done
		}
		cancel()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("kfake process: %v", err)
	}
	return kfakeProcess{Brokers: strings.Split(strings.TrimSpace(line), ","), Pid: cmd.Process.Pid}
}
