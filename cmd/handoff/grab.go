package main

import (
	"context"
	"errors"
	"io"
)

func runGrab(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not built yet")
}

func runView(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("not built yet")
}
