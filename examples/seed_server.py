# complete_server.py
from arc_actors import Server
import uuid
import logging

logging.basicConfig(level=logging.INFO)
logger = logging.getLogger(__name__)

server = Server(server_id="multi-agent-server")

def generate_chat_id():
    return f"chat-{uuid.uuid4().hex[:8]}"

# Finance Agent
@server.agent_handler("finance-agent", "chat.start")
async def finance_start(params, context):
    logger.info(f"Finance agent: new chat")
    return {
        "type": "chat",
        "chat": {
            "chatId": params.get("chatId") or generate_chat_id(),
            "status": "ACTIVE",
            "message": {
                "role": "agent",
                "parts": [{"type": "text", "content": "Finance agent ready"}]
            }
        }
    }

@server.agent_handler("finance-agent", "chat.message")
async def finance_message(params, context):
    return {
        "type": "chat",
        "chat": {
            "chatId": params["chatId"],
            "status": "ACTIVE",
            "message": {
                "role": "agent",
                "parts": [{"type": "text", "content": "Processing finance request"}]
            }
        }
    }

# HR Agent
@server.agent_handler("hr-agent", "chat.start")
async def hr_start(params, context):
    logger.info(f"HR agent: new chat")
    return {
        "type": "chat",
        "chat": {
            "chatId": params.get("chatId") or generate_chat_id(),
            "status": "ACTIVE",
            "message": {
                "role": "agent",
                "parts": [{"type": "text", "content": "HR agent ready"}]
            }
        }
    }

@server.agent_handler("hr-agent", "chat.message")
async def hr_message(params, context):
    return {
        "type": "chat",
        "chat": {
            "chatId": params["chatId"],
            "status": "ACTIVE",
            "message": {
                "role": "agent",
                "parts": [{"type": "text", "content": "Processing HR request"}]
            }
        }
    }

# Support Agent
@server.agent_handler("support-agent", "chat.start")
async def support_start(params, context):
    logger.info(f"Support agent: new chat")
    return {
        "type": "chat",
        "chat": {
            "chatId": params.get("chatId") or generate_chat_id(),
            "status": "ACTIVE",
            "message": {
                "role": "agent",
                "parts": [{"type": "text", "content": "Support agent ready"}]
            }
        }
    }

@server.agent_handler("support-agent", "chat.message")
async def support_message(params, context):
    return {
        "type": "chat",
        "chat": {
            "chatId": params["chatId"],
            "status": "ACTIVE",
            "message": {
                "role": "agent",
                "parts": [{"type": "text", "content": "Processing support request"}]
            }
        }
    }

if __name__ == "__main__":
    print("Starting multi-agent server on port 8000...")
    print("Available agents: finance-agent, hr-agent, support-agent")
    server.run(host="0.0.0.0", port=8000)
