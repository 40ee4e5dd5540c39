package deploy

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"strconv"
	"strings"
)

// configSource is the file that holds the agent's settings table, from this package's directory.
const configSource = "../../cmd/timerd/config.go"

// agentSetting is what the deployment needs to know of one of `timerd agent`'s settings.
type agentSetting struct {
	def        string // its default when the table gives it as a string literal
	retired    bool   // accepted and ignored
	deprecated bool
}

// readAgentSettings reads the agentSettings table of cmd/timerd/config.go: each
// element's env, its literal default, and whether it is retired or deprecated. It reads
// the source because the table is unexported in package main; it fails, rather than
// finding nothing, when the table changes shape.
func readAgentSettings(path string) (map[string]agentSetting, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		return nil, err
	}
	var table *ast.CompositeLit
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || len(vs.Names) != 1 || vs.Names[0].Name != "agentSettings" || len(vs.Values) != 1 {
			return true
		}
		table, _ = vs.Values[0].(*ast.CompositeLit)
		return false
	})
	if table == nil {
		return nil, fmt.Errorf("%s: no `var agentSettings = []agentSetting{...}`", path)
	}
	settings := map[string]agentSetting{}
	for i, elt := range table.Elts {
		lit, ok := elt.(*ast.CompositeLit)
		if !ok {
			return nil, fmt.Errorf("%s: agentSettings[%d] is not a literal", path, i)
		}
		var env string
		var s agentSetting
		for _, kv := range lit.Elts {
			kv, ok := kv.(*ast.KeyValueExpr)
			if !ok {
				continue
			}
			key, _ := kv.Key.(*ast.Ident)
			if key == nil {
				continue
			}
			str, isString := stringLit(kv.Value)
			switch key.Name {
			case "env":
				env = str
			case "def":
				s.def = str
			case "retired":
				s.retired = !isString || str != ""
			case "usage":
				s.deprecated = strings.HasPrefix(strings.ToLower(str), "deprecated")
			}
		}
		if !strings.HasPrefix(env, "TIMERD_") && !strings.HasPrefix(env, "ATTUNE_") {
			return nil, fmt.Errorf("%s: agentSettings[%d] has no env \"TIMERD_…\" or \"ATTUNE_…\" string", path, i)
		}
		settings[env] = s
	}
	if len(settings) < 10 {
		return nil, fmt.Errorf("%s: only %d settings in agentSettings", path, len(settings))
	}
	return settings, nil
}

// stringLit is the value of a string literal.
func stringLit(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}
