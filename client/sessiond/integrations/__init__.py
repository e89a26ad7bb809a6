"""Agent frameworks' session interfaces over the sessiond client.

Each module implements one framework's own interface, so moving a runtime to
sessiond changes one constructor:

* ``sessiond.integrations.openai_agents``: the OpenAI Agents SDK's ``Session``
  (``pip install 'sessiond[openai-agents]'``);
* ``sessiond.integrations.adk``: Google ADK's ``BaseSessionService``
  (``pip install 'sessiond[adk]'``);
* ``sessiond.integrations.langchain``: LangChain's ``BaseChatMessageHistory``
  (``pip install 'sessiond[langchain]'``).

The frameworks are optional: importing this package imports none of them, and
each module imports only its own framework. docs/integrations.md says what
maps to what.
"""
