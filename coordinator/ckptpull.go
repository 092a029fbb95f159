package coordinator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
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
		// The transfer is checked with CRC-32C; the SHA-256 the header
		// records is computed here alone, so the serving node does not
		// spend ~1.2 s of CPU per 1.5 GB on one (see package bulk).
		h := sha256.New()
		res, err := bulk.FetchHashed(ctx, cc, bulk.Request{Kind: bulk.KindState, Step: applied, ChunkBytes: chunk, Sum: bulk.SumCRC32C}, w, timeout, h)
		res.SHA256 = hex.EncodeToString(h.Sum(nil))
		return res, err
	})
	if de := (*DiskError)(nil); errors.As(err, &de) {
		return "", de.Err, nil
	}
	return path, nil, err
}
