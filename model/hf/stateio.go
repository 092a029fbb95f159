package hf

import (
	"fmt"
	"unsafe"
)

// HostStateBlocks returns the training state in checkpoint order, the flat
// parameters and then the optimizer's buffers (AdamW: first and second
// moment; SGD: momentum), each NumParams long, plus a pointer to the
// optimizer's step count. On CPU every block is a Go slice that aliases
// libtorch's memory, so a state can be streamed out of, or into, the model
// without a copy of it in Go (see node.Trainer's WriteState/ReadState).
// The slices stay valid until the model is closed or SetOptimizer runs
// again; nothing may run a step while they are read or written.
//
// ok is false on CUDA, where the blocks are not host memory: use
// CopyParamsTo and OptimizerState there.
func (m *Model) HostStateBlocks() (blocks [][]float32, step *int64, ok bool, err error) {
	err = m.do(func() error {
		if m.opt.Device.IsCUDA() {
			return nil
		}
		bufs, _, s, err := m.optimBuffers()
		if err != nil {
			return err
		}
		step = s
		n := m.params.Numel
		blocks = append(blocks, m.params.ParamSlice())
		for _, b := range bufs {
			if n == 0 {
				blocks = append(blocks, nil)
				continue
			}
			if b.Numel() < n {
				return fmt.Errorf("optimizer buffer of %d elements for %d parameters", b.Numel(), n)
			}
			blocks = append(blocks, unsafe.Slice((*float32)(b.DataPtr()), n))
		}
		ok = true
		return nil
	})
	if err != nil {
		return nil, nil, false, fmt.Errorf("state blocks: %w", err)
	}
	return blocks, step, ok, nil
}
