-- Q9. Deaths within a year of discharge after an ischaemic stroke stay (I63), by
-- initial cause of death.
WITH stroke AS (
  SELECT DISTINCT ben.BEN_IDT_ANO, CAST(c.EXE_SOI_DTF AS DATE) AS discharge
  FROM T_MCO{yy}B b
  JOIN T_MCO{yy}C c ON c.ETA_NUM = b.ETA_NUM AND c.RSA_NUM = b.RSA_NUM
  JOIN IR_BEN_R ben ON ben.BEN_NIR_PSA = c.NIR_ANO_17
  WHERE b.DGN_PAL LIKE 'I63%' AND b.GRG_GHM NOT LIKE '90%'
    AND c.NIR_RET = '0' AND c.NAI_RET = '0' AND c.SEX_RET = '0')
SELECT k.DCD_CIM_COD, COUNT(*) AS n_deaths
FROM stroke s JOIN KI_CCI_R k ON k.BEN_IDT_ANO = s.BEN_IDT_ANO
-- Death dates are known to the month in a project: deaths from the month of discharge
-- to the same month a year later.
WHERE date_trunc('month', k.BEN_DCD_DTE) BETWEEN date_trunc('month', s.discharge)
                                             AND date_trunc('month', s.discharge + INTERVAL '365 days')
GROUP BY 1
