package hf

import (
	"github.com/ringtune/ringtune/data"
	"github.com/ringtune/ringtune/model/torch"
)

// AttnMask exposes the additive attention mask the model builds on its
// device for b, copied out as float32 with its shape, for tests that
// compare it with a PyTorch reference.
func AttnMask(m *Model, b *data.Batch) (mask []float32, shape []int64, err error) {
	err = m.do(func() error {
		s := m.scope
		defer s.Release()
		prev := torch.SetGradEnabled(false)
		defer torch.SetGradEnabled(prev)
		in, err := m.inputs(s, b)
		if err != nil {
			return err
		}
		mk := m.f32(s, in.mask)
		if err := s.Err(); err != nil {
			return err
		}
		shape = mk.Shape()
		mask = make([]float32, mk.Numel())
		return s.Contiguous(mk).CopyTo(mask)
	})
	return mask, shape, err
}
