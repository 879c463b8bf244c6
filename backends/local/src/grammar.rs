//! Constrained generation: `regex`, `json_schema`, `choices` and `dtype` turned into llama.cpp
//! GBNF grammars, so sampling can only produce matching text.

use sglc_vm::backend::SamplingParams;
use sglc_vm::backend::gbnf::constraint_grammar;

/// The grammar a gen call needs, if any. Errors describe a constraint that cannot be compiled.
pub fn grammar_for(params: &SamplingParams) -> Result<Option<String>, String> {
    if let Some(grammar) = constraint_grammar(params)? {
        return Ok(Some(grammar));
    }
    match &params.json_schema {
        Some(schema) => llama_cpp_2::json_schema_to_grammar(schema)
            .map(Some)
            .map_err(|e| format!("cannot compile json_schema: {e}")),
        None => Ok(None),
    }
}
