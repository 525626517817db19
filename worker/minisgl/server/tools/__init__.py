"""Tool calling: parsers of each model family's call markup (`parsers`), the request's
`tools` / `tool_choice` / `parallel_tool_calls` and forced calls (`choice`), and tool messages
for chat templates (`messages`)."""

from minisgl.server.tools.choice import (ForcedParser, ToolPlan, parse_forced, plan_tools,
                                         required_schema, validate_tools)
from minisgl.server.tools.messages import normalize_messages
from minisgl.server.tools.base import ParseResult, ToolCall, ToolParser
from minisgl.server.tools.parsers import (PARSERS, create_tool_parser, default_parser_for_template,
                                          parse_tool_calls)

__all__ = ["PARSERS", "ForcedParser", "ParseResult", "ToolCall", "ToolParser", "ToolPlan",
           "create_tool_parser", "default_parser_for_template", "normalize_messages",
           "parse_forced", "parse_tool_calls", "plan_tools", "required_schema", "validate_tools"]
