package coordinator

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"

	"github.com/ringtune/ringtune/bulk"
)

// pullCheckpoint streams the state of applied committed steps from the
// bulk server on cc into a checkpoint file in dir (see
// WriteCheckpointFrom) and returns its path. A local file-system error
// comes back as diskErr (retrying another replica cannot help), a failed
// or mismatched transfer as err; either way no checkpoint is left.
func pullCheckpoint(ctx context.Context, cc *grpc.ClientConn, dir string, applied int, seed int64, pin *RunPin, keep, chunk int, timeout time.Duration) (path string, diskErr, err error) {
	path, err = WriteCheckpointFetched(dir, applied, seed, pin, keep, func(w io.Writer) (bulk.Result, error) {
		return bulk.Fetch(ctx, cc, bulk.Request{Kind: bulk.KindState, Step: applied, ChunkBytes: chunk}, w, timeout, "")
	})
	if de := (*DiskError)(nil); errors.As(err, &de) {
		return "", de.Err, nil
	}
	return path, nil, err
}
