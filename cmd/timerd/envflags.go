package main

import (
	"fmt"

	"github.com/spf13/pflag"
)

// envFlags gives a command's flags environment variables, in the order the
// agent's settings have (docs/configuration.md): a flag given on the
// command line wins, then its variable (an empty one counts as unset), then
// the flag's default. The help shows the default, never the variable's
// value (it may hold a password).
type envFlags struct {
	fs    *pflag.FlagSet
	flags []string          // in the order bound
	env   map[string]string // flag name → variable
	from  map[string]string // flag name → where its value came from, once applied
}

func newEnvFlags(fs *pflag.FlagSet) *envFlags {
	return &envFlags{fs: fs, env: map[string]string{}, from: map[string]string{}}
}

// bind gives the flag (defined already) the variable env, named in its help.
func (e *envFlags) bind(flag, env string) {
	f := e.fs.Lookup(flag)
	f.Usage += " (env " + env + ")"
	e.flags = append(e.flags, flag)
	e.env[flag] = env
}

// apply sets each bound flag not given on the command line from its
// variable, when set. An error names the variable.
func (e *envFlags) apply(lookupEnv func(string) (string, bool)) error {
	for _, flag := range e.flags {
		f := e.fs.Lookup(flag)
		if f.Changed {
			e.from[flag] = "--" + flag
			continue
		}
		v, ok := lookupEnv(e.env[flag])
		if !ok || v == "" {
			continue
		}
		// Value.Set, not FlagSet.Set: the flag stays "not given".
		if err := f.Value.Set(v); err != nil {
			return usagef("%s: %w", e.env[flag], err)
		}
		e.from[flag] = e.env[flag]
	}
	return nil
}

// name names a flag's setting in a message: where its value came from (the
// flag or its variable), or both when it has none.
func (e *envFlags) name(flag string) string {
	if from := e.from[flag]; from != "" {
		return from
	}
	if env := e.env[flag]; env != "" {
		return fmt.Sprintf("--%s (or %s)", flag, env)
	}
	return "--" + flag
}
