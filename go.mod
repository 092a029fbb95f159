module github.com/ringtune/ringtune

go 1.26.0

require (
	github.com/sugarme/gotch v0.9.1
	go.uber.org/goleak v1.3.0
)

require github.com/stretchr/testify v1.12.1 // indirect
