//! The chat template from the GGUF metadata, reduced to the text before and after a message of
//! each role, which is how the VM renders roles into the prompt.

use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use sglc_vm::backend::ChatTemplate;

const MARK: &str = "\u{1F4CD}sglc-mark\u{1F4CD}";

/// Renders probe conversations through the model's template and cuts out each role's wrapper.
/// Falls back to ChatML when the model has no template or it cannot be rendered.
pub fn derive_chat_template(model: &LlamaModel) -> ChatTemplate {
    try_derive(model).unwrap_or_else(ChatTemplate::chatml)
}

fn try_derive(model: &LlamaModel) -> Option<ChatTemplate> {
    let template = model.chat_template(None).ok()?;
    let render = |messages: &[(&str, &str)]| -> Option<String> {
        let chat: Vec<LlamaChatMessage> = messages
            .iter()
            .map(|(role, content)| LlamaChatMessage::new(role.to_string(), content.to_string()))
            .collect::<Result<_, _>>()
            .ok()?;
        model.apply_chat_template(&template, &chat, false).ok()
    };
    // The wrapper of a role is what a message adds to the conversation before it, around MARK.
    let wrapper = |before: &[(&str, &str)], role: &str| -> Option<(String, String)> {
        let base = if before.is_empty() {
            String::new()
        } else {
            render(before)?
        };
        let mut with = before.to_vec();
        with.push((role, MARK));
        let full = render(&with)?;
        let added = full.strip_prefix(&base)?;
        let (prefix, suffix) = added.split_once(MARK)?;
        Some((prefix.to_string(), suffix.to_string()))
    };
    let system = wrapper(&[], "system")?;
    let user = wrapper(&[("system", "S")], "user")?;
    let assistant = wrapper(&[("system", "S"), ("user", "U")], "assistant")?;
    Some(ChatTemplate {
        system,
        user,
        assistant,
    })
}
