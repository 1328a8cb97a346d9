#!/bin/sh
# A small real test suite: each case is a shell function; results go to
# reports/junit.xml. Set FAIL_CASE=1 to add a failing case.
set -u
mkdir -p reports
pass=0
fail=0
cases=""

check() {
    name=$1
    shift
    start=$(date +%s)
    if "$@" >/tmp/case.$$ 2>&1; then
        pass=$((pass + 1))
        echo "PASS $name"
        cases="$cases<testcase name=\"$name\"/>"
    else
        fail=$((fail + 1))
        echo "FAIL $name: $(head -c 200 /tmp/case.$$)"
        cases="$cases<testcase name=\"$name\"><failure message=\"failed\"/></testcase>"
    fi
    rm -f /tmp/case.$$
}

test_arithmetic() { [ $((6 * 7)) -eq 42 ]; }
test_greeting() { [ "${GREETING:-}" = "hello" ]; }
test_secret_is_present() { [ -n "${API_TOKEN:-}" ]; }
test_workdir_is_ours() { [ -f tests/run_tests.sh ]; }
test_sort_is_stable() { [ "$(printf 'b\na\nc\n' | sort | tr -d '\n')" = "abc" ]; }
test_deliberate_failure() { echo "expected 1, got 2"; return 1; }

echo "running the example suite in $(pwd)"
echo "token seen by the test: $API_TOKEN (redacted in every log)"
check arithmetic test_arithmetic
check greeting test_greeting
check secret_is_present test_secret_is_present
check workdir_is_ours test_workdir_is_ours
check sort_is_stable test_sort_is_stable
if [ "${FAIL_CASE:-0}" = "1" ]; then
    check deliberate_failure test_deliberate_failure
fi
echo "stderr is streamed too" >&2

total=$((pass + fail))
printf '<?xml version="1.0"?>\n<testsuite name="example" tests="%s" failures="%s">%s</testsuite>\n' \
    "$total" "$fail" "$cases" > reports/junit.xml
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
