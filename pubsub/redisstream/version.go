package redisstream

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// minMajor and minMinor are the oldest Redis that works: watermill-redisstream
// finds the entries to claim from a dead consumer with XPENDING ... IDLE,
// added in 6.2 (with XAUTOCLAIM).
const minMajor, minMinor = 6, 2

// serverVersion reads redis_version from INFO server.
func serverVersion(ctx context.Context, client redis.UniversalClient) (string, error) {
	info, err := client.Info(ctx, "server").Result()
	if err != nil {
		return "", fmt.Errorf("read the Redis server version (INFO server): %w", err)
	}
	sc := bufio.NewScanner(strings.NewReader(info))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "redis_version:"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("%w: INFO server has no redis_version", ErrUnsupportedServer)
}

// checkVersion returns an error unless version (INFO's redis_version, like
// "7.0.15") is 6.2 or later.
func checkVersion(version string) error {
	major, minor, err := parseVersion(version)
	if err != nil {
		return fmt.Errorf("%w: version %q: %v; need Redis %d.%d or later", ErrUnsupportedServer, version, err, minMajor, minMinor)
	}
	if major < minMajor || major == minMajor && minor < minMinor {
		return fmt.Errorf("%w: Redis %s is too old, need Redis %d.%d or later "+
			"(recovering the entries of a dead consumer uses XPENDING ... IDLE, added in 6.2)", ErrUnsupportedServer, version, minMajor, minMinor)
	}
	return nil
}

// parseVersion reads the major and minor numbers of "7.0.15", "6.2.0-rc1".
func parseVersion(v string) (major, minor int, err error) {
	parts := strings.SplitN(strings.TrimSpace(v), ".", 3)
	if len(parts) < 2 {
		return 0, 0, fmt.Errorf("not MAJOR.MINOR[.PATCH]")
	}
	if major, err = strconv.Atoi(parts[0]); err != nil || major < 0 {
		return 0, 0, fmt.Errorf("major version %q is not a number", parts[0])
	}
	if minor, err = strconv.Atoi(parts[1]); err != nil || minor < 0 {
		return 0, 0, fmt.Errorf("minor version %q is not a number", parts[1])
	}
	return major, minor, nil
}
