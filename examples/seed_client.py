# test_client.py
from arc_actors import Client
import asyncio

async def test_finance():
    client = Client("http://localhost:8000/arc")

    # Start chat
    response = await client.chat.start(
        target_agent="finance-agent",
        initial_message={
            "role": "user",
            "parts": [{"type": "text", "content": "I need help with an invoice"}]
        }
    )

    print(f"Finance Agent: {response.result['chat']['message']['parts'][0]['content']}")

    # Follow-up
    chat_id = response.result['chat']['chatId']
    response = await client.chat.message(
        target_agent="finance-agent",
        chat_id=chat_id,
        message={
            "role": "user",
            "parts": [{"type": "text", "content": "Invoice number INV-12345"}]
        }
    )

    print(f"Finance Agent: {response.result['chat']['message']['parts'][0]['content']}")

asyncio.run(test_finance())

# Test All Agents
async def test_all_agents():
    client = Client("http://localhost:8000/arc")

    agents = ["finance-agent", "hr-agent", "support-agent"]
    messages = [
        "Help with invoice",
        "Question about salary",
        "General support needed"
    ]

    for agent, message in zip(agents, messages):
        response = await client.chat.start(
            target_agent=agent,
            initial_message={
                "role": "user",
                "parts": [{"type": "text", "content": message}]
            }
        )
        print(f"{agent}: {response.result['chat']['message']['parts'][0]['content']}")

asyncio.run(test_all_agents())
