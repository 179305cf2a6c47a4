"""DeepSeek-Coder's released instruct evaluation, reproduced: the HumanEval prompt in its eight
languages and the code taken from answers (compared with the released scripts' output for the
same input, written here as expected strings), the programs run per language, the eight-language
suite and its mean, and LeetCode Contest."""

import json

import pytest

from conftest import SHARED, need_shared
from dscoder import formats
from dscoder.cli import main
from dscoder.errors import UserError
from dscoder.evaluate import toolchains
from dscoder.evaluate.benchmarks import instruct_completion, load, new_tokens, tasks
from dscoder.evaluate.execute import ExecConfig, execute
from dscoder.infer import prompts

BENCH = SHARED / "benchmarks"
EIGHT = f"humaneval-8lang:{BENCH}"
LEETCODE = BENCH / "leetcode-contest-20240121-Jul.jsonl"
CFG = ExecConfig(workers=2, timeout=10)

# The released script's prompt for HumanEval/23 (strlen) in each language: its
# `build_deepseekcoder_instruction` through the released chat template with the generation prompt.
RELEASED_PROMPTS = {
    "python": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek Coder"
        " model, developed by Deepseek Company, and you only answer questions related to comput"
        "er science. For politically sensitive questions, security and privacy issues, and othe"
        "r non-computer science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given code"
        " and do the completion only. Please return all completed function in a codeblock. Here"
        " is the given code to do completion:\n"
        "```python\n"
        "def strlen(string: str) -> int:\n"
        '    """ Return length of given string\n'
        "    >>> strlen('')\n"
        "    0\n"
        "    >>> strlen('abc')\n"
        "    3\n"
        '    """\n'
        "```\n"
        "### Response:\n"
    ),
    "cpp": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek Coder mo"
        "del, developed by Deepseek Company, and you only answer questions related to computer sci"
        "ence. For politically sensitive questions, security and privacy issues, and other non-com"
        "puter science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given code an"
        "d do the completion only. Please return all completed function in a codeblock. Here is th"
        "e given code to do completion:\n"
        "```cpp\n"
        "#include<assert.h>\n"
        "#include<bits/stdc++.h>\n"
        "// Return length of given string\n"
        '// >>> string_length((""))\n'
        "// (0)\n"
        '// >>> string_length(("abc"))\n'
        "// (3)\n"
        "long string_length(std::string string) {\n"
        "```\n"
        "### Response:\n"
    ),
    "java": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek Coder m"
        "odel, developed by Deepseek Company, and you only answer questions related to computer s"
        "cience. For politically sensitive questions, security and privacy issues, and other non-"
        "computer science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given code a"
        "nd do the completion only. Please return all completed function in a codeblock. Here is "
        "the given code to do completion:\n"
        "```java\n"
        "import java.util.*;\n"
        "import java.lang.reflect.*;\n"
        "import org.javatuples.*;\n"
        "import java.security.*;\n"
        "import java.math.*;\n"
        "import java.io.*;\n"
        "import java.util.stream.*;\n"
        "class Problem {\n"
        "    // Return length of given string\n"
        '    // >>> stringLength((""))\n'
        "    // (0l)\n"
        '    // >>> stringLength(("abc"))\n'
        "    // (3l)\n"
        "    public static long strlen(String string) {\n"
        "```\n"
        "### Response:\n"
    ),
    "php": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek Coder mo"
        "del, developed by Deepseek Company, and you only answer questions related to computer sci"
        "ence. For politically sensitive questions, security and privacy issues, and other non-com"
        "puter science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given code an"
        "d do the completion only. Please return all completed function in a codeblock. Here is th"
        "e given code to do completion:\n"
        "```php\n"
        "<?php\n"
        "// Return length of given string\n"
        '// >>> strlen("")\n'
        "// 0\n"
        '// >>> strlen("abc")\n'
        "// 3\n"
        "function strlen($string) {\n"
        "```\n"
        "### Response:\n"
    ),
    "typescript": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek C"
        "oder model, developed by Deepseek Company, and you only answer questions related t"
        "o computer science. For politically sensitive questions, security and privacy issu"
        "es, and other non-computer science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given "
        "code and do the completion only. Please return all completed function in a codeblo"
        "ck. Here is the given code to do completion:\n"
        "```typescript\n"
        "//Return length of given string\n"
        '// >>> strlen("")\n'
        "// 0\n"
        '// >>> strlen("abc")\n'
        "// 3\n"
        "function strlen(string: string): number {\n"
        "```\n"
        "### Response:\n"
    ),
    "csharp": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek Coder"
        " model, developed by Deepseek Company, and you only answer questions related to comput"
        "er science. For politically sensitive questions, security and privacy issues, and othe"
        "r non-computer science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given code"
        " and do the completion only. Please return all completed function in a codeblock. Here"
        " is the given code to do completion:\n"
        "```csharp\n"
        "using System;\n"
        "using System.Numerics;\n"
        "using System.Diagnostics;\n"
        "using System.Collections.Generic;\n"
        "using System.Linq;\n"
        "using System.Text;\n"
        "using System.Security.Cryptography;\n"
        "class Problem {\n"
        "    // Return length of given string\n"
        '    // >>> StringLength((""))\n'
        "    // (0L)\n"
        '    // >>> StringLength(("abc"))\n'
        "    // (3L)\n"
        "    public static long Strlen(string str) {\n"
        "```\n"
        "### Response:\n"
    ),
    "shell": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek Coder "
        "model, developed by Deepseek Company, and you only answer questions related to computer"
        " science. For politically sensitive questions, security and privacy issues, and other n"
        "on-computer science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given code "
        "and do the completion only. Please return all completed function in a codeblock. Here i"
        "s the given code to do completion:\n"
        "```bash\n"
        "#!/bin/bash\n"
        "# Return length of given string\n"
        '# >>> $(strlen "")\n'
        '# "0"\n'
        '# >>> $(strlen "abc")\n'
        '# "3"\n'
        "#\n"
        "# $1 is a string\n"
        "strlen() {\n"
        "```\n"
        "### Response:\n"
    ),
    "javascript": (
        "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deepseek C"
        "oder model, developed by Deepseek Company, and you only answer questions related t"
        "o computer science. For politically sensitive questions, security and privacy issu"
        "es, and other non-computer science questions, you will refuse to answer\n"
        "### Instruction:\n"
        "Please continue to complete the function. You are not allowed to modify the given "
        "code and do the completion only. Please return all completed function in a codeblo"
        "ck. Here is the given code to do completion:\n"
        "```javascript\n"
        "//Return length of given string\n"
        '// >>> strlen("")\n'
        "// 0\n"
        '// >>> strlen("abc")\n'
        "// 3\n"
        "function strlen(string){\n"
        "```\n"
        "### Response:\n"
    ),
}

# (answer, the code the released `extract_generation_code` takes from it) for the same task
RELEASED_EXTRACTIONS = {
    "python": [
        (
            ("Here it is:\n```python\ndef strlen(string: str) -> int:\n    return len(string)\n```\n"),
            ("\ndef strlen(string: str) -> int:\n    return len(string)\n\n"),
        ),
        (
            ("I cannot do that."),
            (
                "\n"
                "\n"
                "def strlen(string: str) -> int:\n"
                '    """ Return length of given string\n'
                "    >>> strlen('')\n"
                "    0\n"
                "    >>> strlen('abc')\n"
                "    3\n"
                '    """\n'
                "\n"
                "I cannot do that."
            ),
        ),
        (
            ("Here it is:\n```python\ndef size_of(string: str) -> int:\n    return len(string)\n```\n"),
            ("\ndef size_of(string: str) -> int:\n    return len(string)\n\n"),
        ),
    ],
    "cpp": [
        (
            (
                "```cpp\n"
                "#include <string>\n"
                "long string_length(std::string string) {\n"
                "    return string.size();\n"
                "}\n"
                "int main() {\n"
                "    return 0;\n"
                "}\n"
                "```"
            ),
            (
                "#include<assert.h>\n"
                "#include<bits/stdc++.h>\n"
                "// Return length of given string\n"
                '// >>> string_length((""))\n'
                "// (0)\n"
                '// >>> string_length(("abc"))\n'
                "// (3)\n"
                "long string_length(std::string string) {\n"
                "    return string.size();\n"
            ),
        ),
        (
            ("I cannot do that."),
            (
                "#include<assert.h>\n"
                "#include<bits/stdc++.h>\n"
                "// Return length of given string\n"
                '// >>> string_length((""))\n'
                "// (0)\n"
                '// >>> string_length(("abc"))\n'
                "// (3)\n"
                "long string_length(std::string string) {\n"
                "\n"
                "I cannot do that."
            ),
        ),
        (
            (
                "```cpp\n"
                "#include <string>\n"
                "long size_of(std::string string) {\n"
                "    return string.size();\n"
                "}\n"
                "int main() {\n"
                "    return 0;\n"
                "}\n"
                "```"
            ),
            (
                "#include<assert.h>\n"
                "#include<bits/stdc++.h>\n"
                "// Return length of given string\n"
                '// >>> string_length((""))\n'
                "// (0)\n"
                '// >>> string_length(("abc"))\n'
                "// (3)\n"
                "#include <string>\n"
                "long size_of(std::string string) {\n"
                "    return string.size();\n"
            ),
        ),
    ],
    "java": [
        (
            (
                "Sure.\n"
                "```java\n"
                "import java.util.*;\n"
                "class Problem {\n"
                "    public static long strlen(String string) {\n"
                "        return string.length();\n"
                "    }\n"
                "    public static void main(String[] args) {\n"
                "    }\n"
                "}\n"
                "```"
            ),
            (
                "import java.util.*;\n"
                "import java.lang.reflect.*;\n"
                "import org.javatuples.*;\n"
                "import java.security.*;\n"
                "import java.math.*;\n"
                "import java.io.*;\n"
                "import java.util.stream.*;\n"
                "class Problem {\n"
                "    // Return length of given string\n"
                '    // >>> stringLength((""))\n'
                "    // (0l)\n"
                '    // >>> stringLength(("abc"))\n'
                "    // (3l)\n"
                "public static long strlen(String string) {\n"
                "        return string.length();\n"
            ),
        ),
        (
            ("I cannot do that."),
            (
                "import java.util.*;\n"
                "import java.lang.reflect.*;\n"
                "import org.javatuples.*;\n"
                "import java.security.*;\n"
                "import java.math.*;\n"
                "import java.io.*;\n"
                "import java.util.stream.*;\n"
                "class Problem {\n"
                "    // Return length of given string\n"
                '    // >>> stringLength((""))\n'
                "    // (0l)\n"
                '    // >>> stringLength(("abc"))\n'
                "    // (3l)\n"
                "    public static long strlen(String string) {\n"
                "\n"
                "I cannot do that."
            ),
        ),
        (
            (
                "Sure.\n"
                "```java\n"
                "import java.util.*;\n"
                "class Problem {\n"
                "    public static long size_of(String string) {\n"
                "        return string.length();\n"
                "    }\n"
                "    public static void main(String[] args) {\n"
                "    }\n"
                "}\n"
                "```"
            ),
            (
                "import java.util.*;\n"
                "import java.lang.reflect.*;\n"
                "import org.javatuples.*;\n"
                "import java.security.*;\n"
                "import java.math.*;\n"
                "import java.io.*;\n"
                "import java.util.stream.*;\n"
                "class Problem {\n"
                "    // Return length of given string\n"
                '    // >>> stringLength((""))\n'
                "    // (0l)\n"
                '    // >>> stringLength(("abc"))\n'
                "    // (3l)\n"
                "import java.util.*;\n"
                "class Problem {\n"
                "    public static long size_of(String string) {\n"
                "        return string.length();\n"
            ),
        ),
    ],
    "php": [
        (
            ("```php\n<?php\nfunction strlen($string) {\n    return mb_strlen($string);\n}\n```"),
            (
                "<?php\n"
                "// Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function strlen($string) {\n"
                "    return mb_strlen($string);\n"
                "}\n"
            ),
        ),
        (
            ("I cannot do that."),
            (
                "<?php\n"
                "// Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function strlen($string) {\n"
                "\n"
                "I cannot do that."
            ),
        ),
        (
            ("```php\n<?php\nfunction size_of($string) {\n    return mb_size_of($string);\n}\n```"),
            (
                "<?php\n"
                "// Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "<?php\n"
                "function size_of($string) {\n"
                "    return mb_size_of($string);\n"
                "}\n"
            ),
        ),
    ],
    "typescript": [
        (
            ("```typescript\nfunction strlen(string: string): number {\n  return string.length;\n}\n```"),
            (
                "//Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function strlen(string: string): number {\n"
                "  return string.length;\n"
                "}\n"
            ),
        ),
        (
            ("I cannot do that."),
            (
                "//Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function strlen(string: string): number {\n"
                "\n"
                "I cannot do that."
            ),
        ),
        (
            ("```typescript\nfunction size_of(string: string): number {\n  return string.length;\n}\n```"),
            (
                "//Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function size_of(string: string): number {\n"
                "  return string.length;\n"
                "}\n"
            ),
        ),
    ],
    "csharp": [
        (
            (
                "```csharp\n"
                "using System;\n"
                "class Problem {\n"
                "    public static long Strlen(string str) {\n"
                "        return str.Length;\n"
                "    }\n"
                "    public static void Main(string[] args) {\n"
                "    }\n"
                "}\n"
                "```"
            ),
            (
                "using System;\n"
                "using System.Numerics;\n"
                "using System.Diagnostics;\n"
                "using System.Collections.Generic;\n"
                "using System.Linq;\n"
                "using System.Text;\n"
                "using System.Security.Cryptography;\n"
                "class Problem {\n"
                "    // Return length of given string\n"
                '    // >>> StringLength((""))\n'
                "    // (0L)\n"
                '    // >>> StringLength(("abc"))\n'
                "    // (3L)\n"
                "public static long Strlen(string str) {\n"
                "        return str.Length;\n"
            ),
        ),
        (
            ("I cannot do that."),
            (
                "using System;\n"
                "using System.Numerics;\n"
                "using System.Diagnostics;\n"
                "using System.Collections.Generic;\n"
                "using System.Linq;\n"
                "using System.Text;\n"
                "using System.Security.Cryptography;\n"
                "class Problem {\n"
                "    // Return length of given string\n"
                '    // >>> StringLength((""))\n'
                "    // (0L)\n"
                '    // >>> StringLength(("abc"))\n'
                "    // (3L)\n"
                "    public static long Strlen(string str) {\n"
                "\n"
                "I cannot do that."
            ),
        ),
        (
            (
                "```csharp\n"
                "using System;\n"
                "class Problem {\n"
                "    public static long SizeOf(string str) {\n"
                "        return str.Length;\n"
                "    }\n"
                "    public static void Main(string[] args) {\n"
                "    }\n"
                "}\n"
                "```"
            ),
            (
                "using System;\n"
                "using System.Numerics;\n"
                "using System.Diagnostics;\n"
                "using System.Collections.Generic;\n"
                "using System.Linq;\n"
                "using System.Text;\n"
                "using System.Security.Cryptography;\n"
                "class Problem {\n"
                "    // Return length of given string\n"
                '    // >>> StringLength((""))\n'
                "    // (0L)\n"
                '    // >>> StringLength(("abc"))\n'
                "    // (3L)\n"
                "using System;\n"
                "class Problem {\n"
                "    public static long SizeOf(string str) {\n"
                "        return str.Length;\n"
                "    }\n"
                "    \n"
            ),
        ),
    ],
    "shell": [
        (
            ("```bash\nstrlen() {\n  echo ${#1}\n}\n```"),
            (
                "#!/bin/bash\n"
                "# Return length of given string\n"
                '# >>> $(strlen "")\n'
                '# "0"\n'
                '# >>> $(strlen "abc")\n'
                '# "3"\n'
                "#\n"
                "# $1 is a string\n"
                "strlen() {\n"
                "  echo ${#1}\n"
            ),
        ),
        (
            ("I cannot do that."),
            (
                "#!/bin/bash\n"
                "# Return length of given string\n"
                '# >>> $(strlen "")\n'
                '# "0"\n'
                '# >>> $(strlen "abc")\n'
                '# "3"\n'
                "#\n"
                "# $1 is a string\n"
                "strlen() {\n"
                "\n"
                "I cannot do that."
            ),
        ),
        (
            ("```bash\nsize_of() {\n  echo ${#1}\n}\n```"),
            (
                "#!/bin/bash\n"
                "# Return length of given string\n"
                '# >>> $(strlen "")\n'
                '# "0"\n'
                '# >>> $(strlen "abc")\n'
                '# "3"\n'
                "#\n"
                "# $1 is a string\n"
                "size_of() {\n"
                "  echo ${#1}\n"
            ),
        ),
    ],
    "javascript": [
        (
            ("```JavaScript\nfunction strlen(string){\n  return string.length;\n}\n```\nThat's all."),
            (
                "//Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function strlen(string){\n"
                "  return string.length;\n"
                "}\n"
            ),
        ),
        (
            ("I cannot do that."),
            (
                "//Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function strlen(string){\n"
                "\n"
                "I cannot do that."
            ),
        ),
        (
            ("```JavaScript\nfunction size_of(string){\n  return string.length;\n}\n```\nThat's all."),
            (
                "//Return length of given string\n"
                '// >>> strlen("")\n'
                "// 0\n"
                '// >>> strlen("abc")\n'
                "// 3\n"
                "function size_of(string){\n"
                "  return string.length;\n"
                "}\n"
            ),
        ),
    ],
}

# (answer, the code the released LeetCode evaluation takes from it) for its first problem
RELEASED_LEETCODE = [
    (
        (
            "Outline: sort.\n"
            "```python\n"
            "class Solution:\n"
            "    def minimumPushes(self, word: str) -> int:\n"
            "        return sum(i // 8 + 1 for i in range(len(word)))\n"
            "```\n"
            "Done"
        ),
        (
            "class Solution:\n"
            "    def minimumPushes(self, word: str) -> int:\n"
            "        return sum(i // 8 + 1 for i in range(len(word)))"
        ),
    ),
    (
        ("[PYTHON]\nclass Solution:\n    def minimumPushes(self, word: str) -> int:\n        return 0\n[/PYTHON]"),
        ("class Solution:\n    def minimumPushes(self, word: str) -> int:\n        return 0"),
    ),
    (("```python\nclass Solution:\n    pass"), ("```python\nclass Solution:\n    pass")),
    (
        (
            "class Solution:\n"
            "    def minimumPushes(self, word):\n"
            "        return 1\n"
            "print(Solution().minimumPushes('a'))\n"
            "if True:\n"
            "    pass"
        ),
        ("class Solution:\n    def minimumPushes(self, word):\n        return 1"),
    ),
    (
        ("\n        return sum(i // 8 + 1 for i in range(len(word)))\n"),
        (
            "class Solution:\n"
            "    def minimumPushes(self, word: str) -> int:\n"
            "\n"
            "        return sum(i // 8 + 1 for i in range(len(word)))\n"
        ),
    ),
]

# The released MBPP script's prompt for its first problem (task 11), through the chat template.
RELEASED_MBPP_PROMPT = (
    "<｜begin▁of▁sentence｜>You are an AI programming assistant, utilizing the Deeps"
    "eek Coder model, developed by Deepseek Company, and you only answer questions"
    " related to computer science. For politically sensitive questions, security a"
    "nd privacy issues, and other non-computer science questions, you will refuse "
    "to answer\n"
    "### Instruction:\n"
    "Please refer the given examples and generate a python function for my problem.\n"
    "Examples are listed as follows:\n"
    "- Example 1:\n"
    ">>> Problem:\n"
    "Write a function to find the similar elements from the given two tuple lists.\n"
    ">>> Test Cases:\n"
    "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\n"
    "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)\n"
    "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)\n"
    "\n"
    ">>> Code:\n"
    "```python\n"
    "def similar_elements(test_tup1, test_tup2):\n"
    "  res = tuple(set(test_tup1) & set(test_tup2))\n"
    "  return (res) \n"
    "```\n"
    "\n"
    "- Example 2:\n"
    ">>> Problem:\n"
    "Write a python function to identify non-prime numbers.\n"
    ">>> Test Cases:\n"
    "assert is_not_prime(2) == False\n"
    "assert is_not_prime(10) == True\n"
    "assert is_not_prime(35) == True\n"
    "\n"
    ">>> Code:\n"
    "```python\n"
    "import math\n"
    "def is_not_prime(n):\n"
    "    result = False\n"
    "    for i in range(2,int(math.sqrt(n)) + 1):\n"
    "        if n % i == 0:\n"
    "            result = True\n"
    "    return result\n"
    "```\n"
    "\n"
    "- Example 3:\n"
    ">>> Problem:\n"
    "Write a function to find the largest integers from a given list of numbers us"
    "ing heap queue algorithm.\n"
    ">>> Test Cases:\n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \n"
    "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, "
    "65, 58, 35]\n"
    "\n"
    ">>> Code:\n"
    "```python\n"
    "import heapq as hq\n"
    "def heap_queue_largest(nums,n):\n"
    "  largest_nums = hq.nlargest(n, nums)\n"
    "  return largest_nums\n"
    "```\n"
    "\n"
    "Here is my problem:\n"
    ">>> Problem:\n"
    "Write a python function to remove first and last occurrence of a given charac"
    "ter from the string.\n"
    ">>> Test Cases:\n"
    'assert remove_Occ("hello","l") == "heo"\n'
    'assert remove_Occ("abcda","a") == "bcd"\n'
    'assert remove_Occ("PHP","P") == "H"\n'
    "\n"
    "### Response:\n"
)


def strlen_task(language: str, ends: tuple[str, ...] = ("Python/23", "_23_strlen")):
    need_shared(BENCH / "multipl-e-humaneval-php.jsonl")
    bench = load(EIGHT, chat=True)
    return next(t for t in bench.tasks if t.language == language and t.task_id.endswith(ends))


@pytest.mark.parametrize("language", sorted(RELEASED_PROMPTS))
def test_the_instruct_prompt_is_the_released_one_in_every_language(language):
    task = strlen_task(language)
    rendered = formats.render_chat(prompts.instruct_messages(task), add_generation_prompt=True)
    assert rendered == RELEASED_PROMPTS[language]


def test_the_mbpp_instruct_prompt_is_the_released_one():
    _, problems = tasks(need_shared(BENCH / "mbpp.jsonl"), chat=True)
    assert problems[0].task_id == "11"
    rendered = formats.render_chat(prompts.instruct_messages(problems[0]), add_generation_prompt=True)
    assert rendered == RELEASED_MBPP_PROMPT


@pytest.mark.parametrize("language", sorted(RELEASED_EXTRACTIONS))
def test_code_is_taken_from_answers_as_the_released_script_does(language):
    task = strlen_task(language)
    for answer, released in RELEASED_EXTRACTIONS[language]:
        assert instruct_completion(task, answer) == released


def test_leetcode_code_is_taken_as_the_released_script_does():
    _, problems = tasks(need_shared(LEETCODE), chat=True)
    for answer, released in RELEASED_LEETCODE:
        assert instruct_completion(problems[0], answer) == released


def test_released_new_token_limits():
    assert new_tokens("multipl-e", True) == new_tokens("humaneval", True) == new_tokens("leetcode", True) == 1024
    assert new_tokens("mbpp", True) == new_tokens("humaneval", False) == 512


# A correct and a wrong answer for HumanEval/23 (strlen) in each language (PHP: 53, add), as an instruct model
# would write them; the released extraction and harness decide what runs.
STRLEN_ANSWERS = {
    "python": (
        "```python\ndef strlen(string: str) -> int:\n    return len(string)\n```",
        "```python\ndef strlen(string: str) -> int:\n    return len(string) + 1\n```",
    ),
    "cpp": (
        "```cpp\nlong string_length(std::string string) {\n    return string.size();\n}\n"
        "int main() {\n    return 0;\n}\n```",
        "```cpp\nlong string_length(std::string string) {\n    return 7;\n}\n```",
    ),
    "java": (
        "```java\nclass Problem {\n    public static long strlen(String string) {\n        return string.length();\n"
        "    }\n    public static void main(String[] args) {\n    }\n}\n```",
        "```java\nclass Problem {\n    public static long strlen(String string) {\n        return 0;\n    }\n}\n```",
    ),
    # PHP's translation of strlen redeclares a builtin, which no answer survives: add (53) instead
    "php": (
        "```php\n<?php\nfunction add($x, $y) {\n    return $x + $y;\n}\n```",
        "```php\n<?php\nfunction add($x, $y) {\n    return $x - $y;\n}\n```",
    ),
    "typescript": (
        "```typescript\nfunction strlen(string: string): number {\n  return string.length;\n}\n```",
        "```typescript\nfunction strlen(string: string): number {\n  return -1;\n}\n```",
    ),
    "csharp": (
        "```csharp\nclass Problem {\n    public static long Strlen(string str) {\n        return str.Length;\n"
        "    }\n    public static void Main(string[] args) {\n    }\n}\n```",
        "```csharp\nclass Problem {\n    public static long Strlen(string str) {\n        return 3L;\n    }\n}\n```",
    ),
    "shell": ("```bash\nstrlen() {\n  echo ${#1}\n}\n```", "```bash\nstrlen() {\n  echo 5\n}\n```"),
    "javascript": (
        "```javascript\nfunction strlen(string){\n  return string.length;\n}\n```",
        "```javascript\nfunction strlen(string){\n  return 4;\n}\n```",
    ),
}


@pytest.mark.parametrize("language", sorted(STRLEN_ANSWERS))
def test_instruct_answers_run_as_the_released_harness_runs_them(language, tmp_path):
    task = strlen_task(language, ("_53_add",)) if language == "php" else strlen_task(language)
    problem = toolchains.missing(task.language)
    if problem:
        pytest.skip(problem)
    good, bad = STRLEN_ANSWERS[language]
    samples = [{"task_id": task.task_id, "completion": instruct_completion(task, answer)} for answer in (good, bad)]
    execute([task], samples, tmp_path, CFG)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    rows.sort(key=lambda r: r["completion_id"])
    assert [r["passed"] for r in rows] == [True, False], [(r["status"], r["error"][-500:]) for r in rows]


def test_the_eight_language_suite_reports_each_language_and_their_mean(tmp_path):
    need_shared(BENCH / "multipl-e-humaneval-cs.jsonl")
    bench = load(EIGHT, chat=True)
    assert bench.format == "humaneval-8lang" and len(bench.files) == 8
    assert sorted({t.language for t in bench.tasks}) == sorted(STRLEN_ANSWERS)
    assert len({t.task_id for t in bench.tasks}) == len(bench.tasks)  # translations share names: prefixed
    runnable = [lang for lang in ("python", "shell") if not toolchains.missing(lang)]
    chosen = [strlen_task(lang) for lang in runnable]
    samples = [
        {"task_id": t.task_id, "completion": instruct_completion(t, STRLEN_ANSWERS[t.language][0 if i else 1])}
        for i, t in enumerate(chosen)
    ]
    summary = execute(chosen, samples, tmp_path, CFG)
    assert summary["languages"]["python"]["pass@1"] == 0.0 and summary["languages"]["shell"]["pass@1"] == 1.0
    assert summary["language_mean"] == {"languages": 2, "pass@1": 0.5}  # the mean of languages, as published


def test_the_suite_refuses_a_folder_without_a_language(tmp_path):
    need_shared(BENCH / "multipl-e-humaneval-cs.jsonl")
    for code in ("cpp", "java", "php", "ts", "sh", "js"):
        (tmp_path / f"humaneval-{code}.jsonl").write_bytes((BENCH / f"multipl-e-humaneval-{code}.jsonl").read_bytes())
    (tmp_path / "humaneval-python.jsonl").write_bytes((BENCH / "deepseek-humaneval-python.jsonl").read_bytes())
    with pytest.raises(UserError, match="no file for cs"):
        load(f"humaneval-8lang:{tmp_path}")
    (tmp_path / "humaneval-cs.jsonl").write_bytes((BENCH / "multipl-e-humaneval-cs.jsonl").read_bytes())
    assert len(load(f"humaneval-8lang:{tmp_path}").files) == 8  # DeepSeek-Coder's data folder names


# Correct Solution classes for three LeetCode Contest problems, written by hand, and wrong ones.
LEETCODE_SOLUTIONS = {
    "weekly-contest-381-minimum-number-of-pushes-to-type-word-i": (
        "class Solution:\n    def minimumPushes(self, word: str) -> int:\n"
        "        return sum(i // 8 + 1 for i in range(len(word)))\n",
        "class Solution:\n    def minimumPushes(self, word: str) -> int:\n        return len(word)\n",
    ),
    "biweekly-contest-122-divide-an-array-into-subarrays-with-minimum-cost-i": (
        "class Solution:\n    def minimumCost(self, nums: List[int]) -> int:\n"
        "        return nums[0] + sum(sorted(nums[1:])[:2])\n",
        "class Solution:\n    def minimumCost(self, nums: List[int]) -> int:\n        return sum(sorted(nums)[:3])\n",
    ),
    "weekly-contest-380-count-elements-with-maximum-frequency": (
        "class Solution:\n    def maxFrequencyElements(self, nums: List[int]) -> int:\n"
        "        counts = Counter(nums)\n        top = max(counts.values())\n"
        "        return sum(c for c in counts.values() if c == top)\n",
        "class Solution:\n    def maxFrequencyElements(self, nums: List[int]) -> int:\n        return len(set(nums))\n",
    ),
}


def test_leetcode_solutions_pass_and_wrong_ones_fail_by_difficulty(tmp_path):
    _, problems = tasks(need_shared(LEETCODE), chat=True)
    by_id = {t.task_id: t for t in problems}
    samples = []
    for task_id, (good, bad) in LEETCODE_SOLUTIONS.items():
        for answer in (f"Here:\n```python\n{good}```\n", f"[PYTHON]\n{bad}[/PYTHON]"):
            samples.append({"task_id": task_id, "completion": instruct_completion(by_id[task_id], answer)})
    summary = execute(problems, samples, tmp_path, CFG)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {(r["task_id"], r["completion_id"]): r["passed"] for r in rows} == {
        (task_id, j): j == 0 for task_id in LEETCODE_SOLUTIONS for j in (0, 1)
    }
    assert summary["difficulties"]["Easy"] == {"tasks": 3, "samples": 6, "pass@1": 0.5}
    counts = {d: sum(t.record["meta"]["difficulty"] == d for t in problems) for d in ("Easy", "Medium", "Hard")}
    assert counts == {"Easy": 45, "Medium": 91, "Hard": 44}


def test_leetcode_prompt_and_chain_of_thought():
    _, problems = tasks(need_shared(LEETCODE), chat=True)
    task = problems[0]
    assert prompts.instruct_messages(task) == [{"role": "user", "content": task.record["prompt_sft"]}]
    cot = prompts.instruct_messages(task, cot=True)[0]["content"]
    assert cot == task.record["prompt_sft"] + "\nYou need first write a step-by-step outline and then write the code."
    _, humaneval = tasks(need_shared(BENCH / "HumanEval.jsonl.gz"))
    with pytest.raises(UserError, match="--cot: only LeetCode"):
        prompts.instruct_messages(humaneval[0], cot=True)


def test_a_benchmark_row_with_half_a_surrogate_pair_is_refused_before_anything_is_written(
    tiny_base_model, tmp_path, capsys
):
    """A lone `\\ud83d` escape in a row (no tokenizer takes it) is named with its row and field
    before any sample is generated, instead of a traceback and a half-written folder."""
    import gzip

    rows = [json.loads(line) for line in gzip.open(need_shared(BENCH / "HumanEval.jsonl.gz"), "rt")][:3]
    rows[1]["prompt"] += "# \ud83d\n"
    bad = tmp_path / "he.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert main(["eval", "run", "--model", str(tiny_base_model), "--benchmark", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "row 2 (HumanEval/1): 'prompt' holds half of a surrogate pair" in err and "Traceback" not in err, err
    assert not out.exists()


def test_bad_leetcode_rows_and_flags_are_refused_before_anything_is_written(tiny_instruct_model, tmp_path, capsys):
    rows = [json.loads(line) for line in need_shared(LEETCODE).read_text().splitlines()[:3]]
    del rows[1]["test"]
    bad = tmp_path / "lc.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    assert (
        main(["eval", "run", "--model", str(tiny_instruct_model), "--chat", "--benchmark", str(bad), "--out", str(out)])
        != 0
    )
    err = capsys.readouterr().err
    assert f"row 2 ({rows[1]['task_id']}) has no 'test'" in err and "Traceback" not in err
    he = str(BENCH / "HumanEval.jsonl.gz")
    assert (
        main(
            [
                "eval",
                "run",
                "--model",
                str(tiny_instruct_model),
                "--chat",
                "--cot",
                "--benchmark",
                he,
                "--out",
                str(out),
            ]
        )
        != 0
    )
    assert "--cot: only LeetCode" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "run",
                "--model",
                str(tiny_instruct_model),
                "--cot",
                "--benchmark",
                str(LEETCODE),
                "--out",
                str(out),
            ]
        )
        != 0
    )
    assert "--cot goes with --chat" in capsys.readouterr().err
    assert not out.exists()


def test_chat_with_a_base_model_is_warned_about(tiny_base_model, tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert (
        main(
            [
                "eval",
                "generate",
                "--model",
                str(tiny_base_model),
                "--chat",
                "--benchmark",
                str(need_shared(LEETCODE)),
                "--limit",
                "1",
                "--max-new-tokens",
                "4",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "does not end turns with <|EOT|>" in capsys.readouterr().err
    row = json.loads(out.read_text())
    assert row["chat"] is True and row["task_id"] == "weekly-contest-381-minimum-number-of-pushes-to-type-word-i"
    assert (
        main(["eval", "execute", "--benchmark", str(LEETCODE), "--samples", str(out), "--out", str(tmp_path / "r")])
        != 0
    )  # instruct answers without --chat: refused, not run as completions
    assert "give --chat" in capsys.readouterr().err
