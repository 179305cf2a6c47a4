"""Quality screening: syntax (ast / tree-sitter) and readability heuristics."""

from dscoder.data.quality import QualityConfig, quality_reason
from dscoder.repo.parsing import parse

CFG = QualityConfig()


def reason(text, language, path=""):
    return quality_reason(text, parse(text, language, path), CFG)


def test_python_syntax_by_ast():
    assert reason("def ok(x):\n    return x\n", "python") is None
    assert reason("print 'python 2'\n", "python") == "syntax_error"
    assert reason("def broken(:\n    pass\n", "python") == "syntax_error"


def test_tree_sitter_languages():
    assert reason("class A { int f() { return 1; } }\n", "java") is None
    assert reason("class A { int f() { return ; ; }\n", "java") == "syntax_error"
    assert reason("fn main() { let x = 1; }\n", "rust") is None
    assert reason("fn main() { let x = ; }\n", "rust") == "syntax_error"
    assert reason("const f = (a: number): number => a * 2;\n", "typescript", "f.ts") is None
    assert reason('const el = <div className="x">hi</div>;\n', "typescript", "f.tsx") is None
    assert reason("package main\n\nfunc main() {}\n", "go") is None


def test_c_tolerates_a_little_macro_noise_but_not_broken_code():
    macro_heavy = "#define DECL(name) int name(void)\n" + "int f%d(void) { return %d; }\n" * 0
    body = "".join(f"int f{i}(int x) {{ return x + {i}; }}\n" for i in range(200))
    assert reason(macro_heavy + body + "WEIRD_MACRO(\n", "c") is None
    assert reason("int main( { return 0; \n", "c") == "syntax_error"


def test_literal_tables_and_encoded_blobs():
    table = "DATA = [\n" + "".join(f"    {i}, {i * 2}, {i * 3}, 0x{i:02x},\n" for i in range(40)) + "]\n"
    assert reason(table, "python") == "literal_table"
    blob = "BLOB = (\n" + "".join(f"    '{'QUJD' * 20}'\n" for _ in range(30)) + ")\n"
    assert reason(blob, "python") == "encoded_data"
    assert reason("x = {" + "}{".join([";:"] * 200) + "}\n", "text") == "low_identifier_content"


def test_readable_code_passes():
    code = "".join(f"def function_{i}(value):\n    return value * {i}\n\n" for i in range(30))
    assert reason(code, "python") is None


def test_readability_reads_lines_as_splitlines_does():
    # \r\n, \r and \f line breaks, and blank lines of other spaces, count as in str.splitlines()
    row = "    1, 2, 3, 4,"
    for sep in ("\n", "\r\n", "\r", "\f", "\n \t\n"):
        table = "DATA = [" + sep + sep.join([row] * 30) + sep + "]" + sep
        assert reason(table, "python") == "literal_table", repr(sep)
    encoded = "x = 1\n" + "".join(f"'{'QUJD' * 20}'\n" for _ in range(3)) + "\n\n\n"
    assert reason(encoded, "text") == "encoded_data"
    assert reason(encoded.replace("x = 1\n", "x = 1\ny = 2\nz = 3\nw = 4\n"), "text") is None
