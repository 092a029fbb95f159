//go:build !amd64

package allreduce

// addF32 is dst[i] += src[i].
func addF32(dst, src []float32) { addF32Generic(dst, src) }
